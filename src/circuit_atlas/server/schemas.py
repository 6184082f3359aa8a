"""The explorer API's contract: pydantic models of every request and response body.

Why models rather than hand-written checks: FastAPI validates requests against them and writes
them into the OpenAPI document (`/openapi.json`), so the validation, the documentation and the
property-based tests (schemathesis, `tests/server/test_contract.py`) all read one definition.

Requests are strict: unknown fields are refused (typos), numbers must be finite JSON numbers of
the declared kind ("3" is not an integer, true is not a number), strings must be valid Unicode
(no lone surrogates, which cannot be written to a UTF-8 file). Responses allow fields beyond the
declared ones, so a client written against this contract keeps working when a field is added.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from circuit_atlas.io.untrusted import has_lone_surrogate

MAX_ID_CHARS = 200
MAX_LABEL_CHARS = 2000
MAX_MEMBERS = 2000
MAX_ENTRIES_PER_SECTION = 100_000
MAX_NODE_IDS = 5000
MAX_NEW_TOKENS = 64
MAX_TOP_K = 50
MAX_TOP_PAIRS = 50
MAX_ROWS = 256
MAX_NODES_PER_ROW = 1024
MAX_ABS_VALUE = 1e6
MAX_TEMPERATURE = 100.0
MAX_SEED = 2**63 - 1
MAX_FEATURE_COORD = 2**31 - 1

Op = Literal["ablate", "scale", "set"]
Positions = Literal["node", "all", "from_node"]
Mode = Literal["free", "constrained"]


def _unicode(text: str) -> str:
    if has_lone_surrogate(text):
        raise ValueError("must be valid Unicode text (it holds a lone surrogate such as \\ud800)")
    return text


NodeId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS),
                   AfterValidator(_unicode)]
Key = NodeId
Label = Annotated[str, StringConstraints(max_length=MAX_LABEL_CHARS), AfterValidator(_unicode)]
Name = Annotated[str, StringConstraints(max_length=MAX_ID_CHARS), AfterValidator(_unicode)]


class RequestBody(BaseModel):
    """Base of request bodies: strict types, finite numbers, no unknown fields."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ResponseBody(BaseModel):
    """Base of response bodies: declared fields are checked, further fields pass through."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class ErrorBody(BaseModel):
    """Every 4xx answer: one message that names the field or the file at fault."""

    detail: str


# ---------------------------------------------------------------------- annotations
class SupernodePatch(RequestBody):
    name: Label = ""
    members: Annotated[list[NodeId], Field(min_length=1, max_length=MAX_MEMBERS)]


LabelPatch = Annotated[dict[Key, Label | None], Field(max_length=MAX_ENTRIES_PER_SECTION)]


class AnnotationPatch(RequestBody):
    """A merge patch: each key set to a value is stored, to null (or "" for labels) deleted;
    keys not named are kept. `feature_labels` keys are a node's `feature` value (every position
    of the feature)."""

    node_labels: LabelPatch | None = None
    feature_labels: LabelPatch | None = None
    supernodes: Annotated[dict[Key, SupernodePatch | None],
                          Field(max_length=MAX_ENTRIES_PER_SECTION)] | None = None
    pinned_sets: Annotated[dict[Key, Annotated[list[NodeId], Field(max_length=MAX_MEMBERS)] | None],
                           Field(max_length=MAX_ENTRIES_PER_SECTION)] | None = None


class Supernode(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str
    members: Annotated[list[str], Field(min_length=1)]


class Annotations(ResponseBody):
    """The stored annotations of one graph (`revision` counts the saves)."""

    version: int
    revision: Annotated[int, Field(ge=0)]
    updated: str | None
    node_labels: dict[str, str]
    feature_labels: dict[str, str]
    supernodes: dict[str, Supernode]
    pinned_sets: dict[str, list[str]]


# ---------------------------------------------------------------------- graphs
class NodeIds(RequestBody):
    node_ids: Annotated[list[NodeId], Field(max_length=MAX_NODE_IDS)]


class OptionalNodeIds(RequestBody):
    """`node_ids`: the pinned nodes (an empty list is a subgraph of none); absent or null: the
    whole graph."""

    node_ids: Annotated[list[NodeId], Field(max_length=MAX_NODE_IDS)] | None = None


class GraphNode(ResponseBody):
    """A node of a graph-JSON document (`docs/graph-json.md` §5); files from other tools may
    add fields."""

    node_id: str
    feature: int | None = None
    layer: str | None = None
    ctx_idx: int | None = None
    feature_type: str | None = None
    clerp: str | None = None
    influence: float | None = None
    activation: float | None = None
    token_prob: float | None = None


class LabelledNode(GraphNode):
    label: str


class GraphLink(ResponseBody):
    source: str
    target: str
    weight: float


class GraphDocument(ResponseBody):
    """A graph-JSON document as the explorer reads it (`docs/graph-json.md`)."""

    metadata: dict[str, Any]
    qParams: dict[str, Any] = {}
    nodes: list[GraphNode]
    links: list[GraphLink]


class ViewInfo(ResponseBody):
    graph_id: str
    source: Literal["native", "json"]
    node_threshold: float
    edge_threshold: float | None
    default_node_threshold: float
    default_edge_threshold: float
    n_nodes: int
    n_links: int
    has_native: bool


class GraphView(GraphDocument):
    """A graph pruned at the requested thresholds, plus what the view was made with."""

    view: ViewInfo


class GraphSummary(ResponseBody):
    id: str
    slug: str
    prompt: str
    prompt_tokens: list[str]
    scan: str | None
    has_native: bool
    has_json: bool
    node_threshold: float
    edge_threshold: float
    folder: str
    error: str | None
    warnings: list[str] = []
    # What the graph browser lists (`listing.py`): None where the files do not say.
    created: str | None = None
    model: str | None = None
    transcoders: str | None = None
    n_tokens: int | None = None
    n_features: int | None = None
    n_nodes: int | None = None
    n_links: int | None = None
    replacement: float | None = None
    completeness: float | None = None


class GraphList(ResponseBody):
    graphs: list[GraphSummary]
    features: bool
    steer: bool


class Health(ResponseBody):
    ok: bool
    version: str


class EdgeRow(ResponseBody):
    node_id: str
    weight: float
    label: str
    feature: int | None
    feature_type: str | None
    layer: str | None
    ctx_idx: int | None


class Neighbourhood(ResponseBody):
    node: LabelledNode
    incoming: list[EdgeRow]
    outgoing: list[EdgeRow]
    n_incoming: int
    n_outgoing: int
    incoming_abs_sum: float
    outgoing_abs_sum: float
    scope: Literal["view", "full"]


class Subgraph(ResponseBody):
    nodes: list[LabelledNode]
    links: list[GraphLink]
    missing: list[str]


class Scores(ResponseBody):
    replacement: float
    completeness: float
    n_nodes: int | None


class Feature(ResponseBody):
    available: bool
    layer: int
    index: int
    feature: dict[str, Any] | None


# ---------------------------------------------------------------------- steering
class _Row(RequestBody):
    nodes: Annotated[list[NodeId], Field(min_length=1, max_length=MAX_NODES_PER_ROW,
                                         description="one feature node, or a supernode's members")]
    positions: Positions = Field("node", description=(
        "node: each node's own position; all: every position, generated ones included; "
        "from_node: the node's position and every later one, generated ones included"))
    name: Name | None = Field(None, description="shown in the results")


class AblateRow(_Row):
    """Set the features to 0."""

    op: Literal["ablate"]


class ValueRow(_Row):
    """Multiply the features' activations by `value` (scale), or set them to `value` (set)."""

    op: Literal["scale", "set"]
    value: Annotated[float, Field(ge=-MAX_ABS_VALUE, le=MAX_ABS_VALUE)]


# One row of the Steer panel; `op` says which fields it has (ablate takes no value).
SteerRow = Annotated[AblateRow | ValueRow, Field(discriminator="op")]


class SteerBody(RequestBody):
    """Steering request. `temperature` 0 is greedy decoding; any positive temperature samples
    from softmax(logits / temperature), computed so that tiny temperatures approach greedy
    decoding instead of overflowing. `top_p` keeps the smallest set of most likely tokens whose
    probability reaches it (the most likely token always)."""

    interventions: Annotated[list[SteerRow], Field(min_length=1, max_length=MAX_ROWS)]
    mode: Mode = "free"
    freeze_attention: bool = False
    max_new_tokens: Annotated[int, Field(ge=0, le=MAX_NEW_TOKENS)] = 16
    temperature: Annotated[float, Field(ge=0, le=MAX_TEMPERATURE)] = 0.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0
    top_k: Annotated[int, Field(ge=1, le=MAX_TOP_K)] = 10

    @model_validator(mode="after")
    def _freeze_needs_free_mode(self) -> "SteerBody":
        if self.freeze_attention and self.mode != "free":
            raise ValueError("freeze_attention applies to mode 'free' only")
        return self


class ModelInfo(ResponseBody):
    name: str
    transcoders: str | list[str] | None
    n_layers: int
    n_features: int
    max_positions: int | None


class SteerInfo(ResponseBody):
    available: bool
    model: ModelInfo | None
    max_new_tokens: int
    max_top_k: int
    reason: str | None


class SteerStatus(SteerInfo):
    warning: str | None
    source: Literal["native", "json"] | None
    tokens_from: str | None


class SteerRowEcho(ResponseBody):
    nodes: list[str]
    op: Op
    value: float | None
    positions: Positions
    name: str | None


class SteerTiming(ResponseBody):
    queued_s: float
    run_s: float


class SteerResult(ResponseBody):
    graph_id: str
    warning: str | None
    intervention: dict[str, Any]
    generation: dict[str, Any] | None
    rows: list[SteerRowEcho]
    timing: SteerTiming


# ---------------------------------------------------------------------- error messages
# ---------------------------------------------------------------------- attention panel
class AttentionEdgeRef(ResponseBody):
    source: str
    target: str


class AttentionStatus(ResponseBody):
    graph_id: str
    stored: bool = Field(description="explanations are stored beside the graph (or in its JSON)")
    computable: bool = Field(description="the server's model can compute them for this graph")
    reason: str | None = Field(description="why the panel cannot answer, and how to precompute")
    edges: list[AttentionEdgeRef] = Field(description="the edges with stored head tables")


class AttentionHead(ResponseBody):
    layer: int
    head: int
    weight: float = Field(description="this head's part of the edge weight")
    share: float | None = Field(description="weight / edge (None for a zero edge)")
    query_position: int = Field(description="the pattern entry carrying most of the head's weight")
    key_position: int
    explained: bool = Field(description="a QK explanation of this head can be shown")


class EdgeHeads(ResponseBody):
    graph_id: str
    source: str
    target: str
    source_label: str
    target_label: str
    source_position: int
    target_position: int
    same_position: bool
    edge: float
    hop: str
    residual: float = Field(description="paths with no attention (same-position edges only)")
    total: float = Field(description="heads + residual; equals the edge")
    heads: list[AttentionHead]
    origin: Literal["stored", "computed"]
    note: str | None


class QKTerm(ResponseBody):
    id: str = Field(description="a graph node id for tokens, features and errors")
    kind: str
    label: str
    position: int | None
    node: bool = Field(description="the term is a kind of graph node (token, feature, error)")
    in_graph: bool = Field(description="the term is a node of this graph (can be pinned)")


class QKTermTotal(QKTerm):
    value: float = Field(description="the term's share of the score, summed over the other side")


class QKPair(ResponseBody):
    query: QKTerm
    key: QKTerm
    value: float = Field(description="the pair's share of the pre-softmax score")
    weight_effect: float = Field(description="how much the key's attention weight drops without it")


class HeadExplanation(ResponseBody):
    graph_id: str
    source: str
    target: str
    origin: Literal["stored", "computed"]
    layer: int
    head: int
    query_position: int
    key_position: int
    query_token: str
    key_token: str
    score: float
    logit: float
    softcap: float | None
    attention_weight: float
    unexplained: float
    n_query_terms: int
    n_key_terms: int
    pairs: list[QKPair]
    query_terms: list[QKTermTotal]
    key_terms: list[QKTermTotal]


def describe_errors(errors: list[dict[str, Any]], *, skip: tuple[str, ...] = ("body",)) -> str:
    """One line per validation error (at most five), each naming the field by its path:
    ``interventions[0].value: Input should be less than or equal to 1000000``."""
    lines = []
    for error in errors[:5]:
        parts = [p for i, p in enumerate(error.get("loc", ())) if not (i == 0 and p in skip)]
        tag = _union_tag(parts)
        where = _field_path(parts)
        message = error.get("msg", "invalid value")
        kind = error.get("type")
        if kind == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "")
            where, message = "", f"the request body is not valid JSON: {reason}".rstrip(": ")
        elif not where and kind in ("model_attributes_type", "dict_type", "model_type"):
            message = "the request body must be a JSON object"
        elif kind == "extra_forbidden":
            message = f"not a field of op {tag!r}" if tag else "unknown field (typo?)"
        elif kind == "missing":
            message = f"required for op {tag!r}" if tag else "required field missing"
        elif message.startswith("Value error, "):
            message = message[len("Value error, "):]
        lines.append(f"{where}: {message}" if where else message)
    more = len(errors) - len(lines)
    return "; ".join(lines) + (f"; and {more} more" if more > 0 else "")


_UNION_TAGS = frozenset(get_args(Op))


def _union_tag(parts: list[Any]) -> str | None:
    """Remove pydantic's tagged-union step (``interventions.0.set.value``) from `parts` and
    return the tag: the field path reads as the client wrote it."""
    for i in range(1, len(parts)):
        if isinstance(parts[i - 1], int) and parts[i] in _UNION_TAGS:
            return parts.pop(i)
    return None


def _field_path(parts: list[Any]) -> str:
    text = ""
    for part in parts:
        if part == "[key]":  # pydantic's marker for an invalid dict key
            text += " (key)"
        elif isinstance(part, int):
            text += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier():
            text += f".{part}" if text else part
        else:
            text += f"[{str(part)[:60]!r}]"
    return text
