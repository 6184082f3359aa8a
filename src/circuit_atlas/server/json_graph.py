"""A graph that exists only as a graph-JSON file (`docs/graph-json.md`), as the explorer serves
it (`JsonGraph`, a `ServedGraph`), and what steering it takes: recover the token ids and feature
coordinates from the document, and decide whether the loaded model may steer it
(`JsonSteerable`).

Why this is more than parsing: a graph-JSON file stores neither its model nor the full token ids
explicitly. Token ids sit in embedding node ids (``E_{token}_{pos}``), which pruned files may lack,
and the file names at most its transcoder set (``metadata.scan``). Feature indices in the file are
meaningful only for the transcoders the graph was traced with, so everything that can prove or
disprove that is checked here, and the steerer refuses (naming the reason) rather than steering
features of some other dictionary. What cannot be verified is allowed with a warning.

Token ids, in order of trust:

1. every position's embedding node is present: the ids are read from the node ids;
2. otherwise ``metadata.prompt`` is tokenised with the loaded tokenizer, and accepted only if it
   reproduces ``metadata.prompt_tokens`` and every embedding node that is present.

Either way the ids must read as ``metadata.prompt_tokens`` with the loaded tokenizer (a
difference in leading spaces only is tolerated: circuit-tracer's writer decodes each token alone,
which drops the word-start space of SentencePiece tokens).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Mapping, Sequence

import torch
from pydantic import ValidationError

from circuit_atlas.errors import CircuitAtlasError, GraphFileError
from circuit_atlas.io.cantor import cantor_pair
from circuit_atlas.server.graphs import Annotations, NotSteerable, ScoresUnavailable
from circuit_atlas.server.schemas import GraphDocument, describe_errors
from circuit_atlas.server.identity import same_ref
from circuit_atlas.server.views import filter_by_influence, neighbourhood

FEATURE_NODE_TYPES = frozenset({"cross layer transcoder", "transcoder"})
NODE_KINDS = {
    "mlp reconstruction error": "error",
    "embedding": "token",
    "logit": "logit",
}
UNVERIFIED_WARNING = (
    "this graph was not traced by this server's model and transcoders as far as the file says; "
    "feature indices are assumed to refer to the loaded transcoders"
)
# ASCII digits only, at most 12 of them: ids are read from files anyone can drop in the data folder.
_NUMBER = r"([0-9]{1,12})"
_FEATURE_ID = re.compile(rf"{_NUMBER}_{_NUMBER}_{_NUMBER}")
_EMBEDDING_ID = re.compile(rf"E_{_NUMBER}_{_NUMBER}")
_LARGEST = 10**12
# Graph JSON writers show these characters for newline, tab and carriage return in prompt_tokens.
_SHOWN_WHITESPACE = str.maketrans({"⏎": "\n", "→": "\t", "↵": "\r"})


class JsonGraphRefused(NotSteerable):
    """The graph-JSON document cannot be steered safely with the loaded model (the message says
    why); the steerer turns it into a 409."""


class JsonGraph:
    """A graph-JSON document served on its own (no native graph): views filter its `influence`
    values, neighbourhoods and subgraphs read its links, scores are unavailable, and steering
    goes through `adapt`."""

    source = "json"
    checks_with_tokenizer = True  # recovering token ids may tokenise the prompt

    def __init__(self, doc: dict[str, Any], graph_id: str, slug: str) -> None:
        self.doc = doc
        self.graph_id, self.slug = graph_id, slug
        self.label = f"graph {graph_id!r} (a JSON file)"

    @classmethod
    def checked(cls, doc: dict[str, Any], graph_id: str, slug: str, file: Any) -> "JsonGraph":
        """`JsonGraph(doc, ...)` once every node and link has the types the API promises
        (`schemas.GraphDocument`: finite numbers, string ids; `file` names the document in the
        message): the file may come from anywhere, and a bad value must stop here with its place
        named, not break a view later."""
        try:
            GraphDocument.model_validate(doc, strict=True)
        except ValidationError as exc:
            raise GraphFileError(
                f"{file} does not have the graph-JSON form: {describe_errors(exc.errors(), skip=())}"
            ) from None
        return cls(doc, graph_id, slug)

    def view(self, node_threshold: float, edge_threshold: float) -> tuple[dict[str, Any], None]:
        return filter_by_influence(self.doc, node_threshold), None

    def full_neighbourhood(self, node_id: str, annotations: Annotations,
                           limit: int | None) -> dict[str, Any] | None:
        return neighbourhood(self.doc, node_id, annotations, limit)

    def subgraph(self, node_ids: Sequence[str]) -> tuple[list[dict], list[dict], list[str]]:
        by_id = {node["node_id"]: node for node in self.doc["nodes"]}
        nodes = [by_id[nid] for nid in node_ids if nid in by_id]
        chosen = set(by_id) & set(node_ids)
        links = [link for link in self.doc["links"]
                 if link.get("source") in chosen and link.get("target") in chosen]
        return nodes, links, [nid for nid in node_ids if nid not in by_id]

    def scores(self, node_ids: Sequence[str] | None) -> dict[str, Any]:
        raise ScoresUnavailable(
            f"graph {self.graph_id!r} has only a JSON file; replacement/completeness scores need "
            "the native graph (write it with write_graph_bundle or `circuit-atlas trace`)"
        )

    def steerable(self, model: Any) -> "JsonSteerable":
        return adapt(self.doc, model)


@dataclass(frozen=True)
class JsonSteerable:
    """What the steerer needs from a graph-JSON document, checked against the loaded model.

    - ``input_ids`` int64 [P]: the prompt's token ids (BOS included).
    - ``tokens_from``: ``"embedding nodes"`` or ``"prompt"`` (where the ids came from).
    - ``features``: node id -> (layer, position, feature) of every feature node.
    - ``kinds``: node id -> ``error`` / ``token`` / ``logit`` / the file's feature_type for the
      nodes that cannot be steered.
    - ``warning``: None when the file names this server's transcoders, else `UNVERIFIED_WARNING`.
    """

    input_ids: Any
    tokens_from: str
    features: Mapping[str, tuple[int, int, int]]
    kinds: Mapping[str, str]
    n_layers: int | None
    scan: str | None
    warning: str | None = field(default=None)

    def node_kind(self, node_id: str) -> str | None:
        """``feature`` / ``error`` / ``token`` / ``logit`` / other, or None for unknown ids."""
        if node_id in self.features:
            return "feature"
        return self.kinds.get(node_id)

    def feature_coords(self, node_id: str) -> tuple[int, int, int]:
        return self.features[node_id]


# ---------------------------------------------------------------------- nodes
def _int(value: Any) -> int | None:
    """A JSON integer (or its decimal string, as layers are written), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if abs(value) < _LARGEST else None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 12:
        return int(value)
    return None


def feature_coords(node: Mapping[str, Any]) -> tuple[int, int, int]:
    """(layer, position, feature) of a feature node, from its id ``{l}_{f}_{p}``.

    The id is what every writer (ours, circuit-tracer, Neuronpedia) spells the same way; the
    node's ``layer`` / ``ctx_idx`` fields and, for schema 1, its Cantor-paired ``feature`` value
    must agree with it, so a hand-edited or foreign node is refused rather than misread.
    """
    node_id = node["node_id"]
    match = _FEATURE_ID.fullmatch(node_id) if isinstance(node_id, str) else None
    if match is None:
        raise JsonGraphRefused(
            f"feature node {node_id!r} does not have the id form "
            "'{layer}_{feature}_{position}'"
        )
    layer, feat, pos = (int(g) for g in match.groups())
    checks = [("layer", node.get("layer"), layer), ("ctx_idx", node.get("ctx_idx"), pos)]
    for name, stored, expected in checks:
        if stored is not None and _int(stored) != expected:
            raise JsonGraphRefused(
                f"feature node {node_id!r} has {name}={stored!r}, but its id says {expected}"
            )
    return layer, pos, feat


def _check_cantor(node: Mapping[str, Any], layer: int, feat: int) -> None:
    stored = node.get("feature")
    if stored is not None and _int(stored) != cantor_pair(layer, feat):
        raise JsonGraphRefused(
            f"feature node {node['node_id']!r} has feature={stored!r}, but its id (layer {layer}, "
            f"feature {feat}) gives {cantor_pair(layer, feat)} in schema_version 1"
        )


def classify_nodes(
    doc: Mapping[str, Any],
) -> tuple[dict[str, tuple[int, int, int]], dict[str, str], dict[int, int]]:
    """(feature coords by id, kind of every other node by id, embedding token id by position)."""
    schema_1 = _int(doc.get("metadata", {}).get("schema_version")) == 1
    features: dict[str, tuple[int, int, int]] = {}
    kinds: dict[str, str] = {}
    embeddings: dict[int, int] = {}
    for node in doc.get("nodes", []):
        node_id, ftype = node["node_id"], node.get("feature_type")
        if ftype in FEATURE_NODE_TYPES:
            layer, pos, feat = feature_coords(node)
            if schema_1:
                _check_cantor(node, layer, feat)
            features[node_id] = (layer, pos, feat)
            continue
        kinds[node_id] = NODE_KINDS.get(ftype, str(ftype or "untyped"))
        if ftype == "embedding":
            token, pos = _embedding(node)
            if embeddings.get(pos, token) != token:
                raise JsonGraphRefused(
                    f"two embedding nodes give position {pos} different token ids "
                    f"({embeddings[pos]} and {token})"
                )
            embeddings[pos] = token
    return features, kinds, embeddings


def _embedding(node: Mapping[str, Any]) -> tuple[int, int]:
    """(token id, position) of an embedding node ``E_{token}_{pos}``."""
    node_id = node["node_id"]
    match = _EMBEDDING_ID.fullmatch(node_id) if isinstance(node_id, str) else None
    if match is None:
        raise JsonGraphRefused(
            f"embedding node {node['node_id']!r} does not have the id form "
            "'E_{token id}_{position}'"
        )
    token, pos = int(match.group(1)), int(match.group(2))
    stored = node.get("ctx_idx")
    if stored is not None and _int(stored) != pos:
        raise JsonGraphRefused(
            f"embedding node {node['node_id']!r} has ctx_idx={stored!r}, but its id says {pos}"
        )
    return token, pos


# ---------------------------------------------------------------------- tokens
def prompt_tokens(metadata: Mapping[str, Any]) -> list[str]:
    tokens = metadata.get("prompt_tokens")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise JsonGraphRefused(
            "metadata.prompt_tokens is missing or not a list of strings, so the prompt's length "
            "is unknown"
        )
    return tokens


def _same_token(ours: str, theirs: str) -> bool:
    """Equal up to a leading space, and up to the symbols writers show whitespace as."""
    ours, theirs = ours.translate(_SHOWN_WHITESPACE), theirs.translate(_SHOWN_WHITESPACE)
    return ours == theirs or ours.lstrip(" ") == theirs.lstrip(" ")


def first_difference(ours: Sequence[str], theirs: Sequence[str]) -> str | None:
    """Where two token lists differ (up to leading spaces), in words; None when they agree."""
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if not _same_token(a, b):
            return f"first difference at position {i}: the file has {b!r}, the tokenizer {a!r}"
    if len(ours) != len(theirs):
        i = min(len(ours), len(theirs))
        extra = (theirs if len(theirs) > len(ours) else ours)[i]
        who = "the file" if len(theirs) > len(ours) else "the tokenizer"
        return (
            f"the file lists {len(theirs)} tokens and the tokenizer gives {len(ours)}; first "
            f"difference at position {i}: only {who} has {extra!r}"
        )
    return None


def recover_input_ids(
    doc: Mapping[str, Any], lm: Any, embeddings: Mapping[int, int]
) -> tuple[Any, str]:
    """The prompt's token ids and where they came from (see the module docstring)."""
    metadata = doc.get("metadata", {})
    tokens = prompt_tokens(metadata)
    n = len(tokens)
    beyond = sorted(p for p in embeddings if p >= n)
    if beyond:
        raise JsonGraphRefused(
            f"embedding node at position {beyond[0]} lies past the {n} tokens of "
            "metadata.prompt_tokens"
        )
    if len(embeddings) == n:
        _check_vocabulary([embeddings[p] for p in range(n)], lm)
        ids = torch.tensor([embeddings[p] for p in range(n)], dtype=torch.long)
        why = first_difference(lm.token_strings(ids), tokens)
        if why is not None:
            raise JsonGraphRefused(
                "the token ids of the embedding nodes do not read as metadata.prompt_tokens with "
                f"the loaded tokenizer ({why}); the graph was made with another tokenizer"
            )
        return ids, "embedding nodes"
    return _ids_from_prompt(metadata, tokens, lm, embeddings), "prompt"


def _check_vocabulary(ids: Sequence[int], lm: Any) -> None:
    bad = [i for i in ids if not 0 <= i < lm.vocab_size]
    if bad:
        raise JsonGraphRefused(
            f"embedding node token id {bad[0]} is outside the vocabulary [0, {lm.vocab_size}) "
            f"of model {lm.name!r}"
        )


def _ids_from_prompt(
    metadata: Mapping[str, Any], tokens: list[str], lm: Any, embeddings: Mapping[int, int]
) -> Any:
    missing = [p for p in range(len(tokens)) if p not in embeddings]
    context = (
        f"the file lacks the embedding nodes of {len(missing)} position(s) (first: {missing[0]}), "
        "so the token ids come from tokenising metadata.prompt"
    )
    prompt = metadata.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise JsonGraphRefused(f"{context}, which is missing")
    if len(prompt) > 256 * len(tokens) + 1024:  # no token is that long: refuse before tokenising
        raise JsonGraphRefused(
            f"{context}, but it has {len(prompt):,} characters for {len(tokens)} tokens")
    try:
        ids = lm.tokenize(prompt).cpu()
    except CircuitAtlasError as exc:
        raise JsonGraphRefused(f"{context}, which the loaded model refuses: {exc}") from exc
    why = first_difference(lm.token_strings(ids), tokens)
    if why is not None:
        raise JsonGraphRefused(
            f"{context}, but the loaded tokenizer does not reproduce metadata.prompt_tokens ({why})"
        )
    for pos in sorted(embeddings):
        if int(ids[pos]) != embeddings[pos]:
            raise JsonGraphRefused(
                f"{context}, but at position {pos} the tokenizer gives id {int(ids[pos])} while "
                f"the file's embedding node says {embeddings[pos]}"
            )
    return ids


# ---------------------------------------------------------------------- identity
def _last_part(ref: Any) -> str | None:
    """The final component of a hub id or path ('google/gemma-2-2b' -> 'gemma-2-2b')."""
    if not isinstance(ref, str) or not ref.strip("/"):
        return None
    return PurePath(ref.split("@")[0].rstrip("/")).name.lower() or None


def _logit_layers(doc: Mapping[str, Any]) -> set[int | None]:
    return {
        _int(n.get("layer")) for n in doc.get("nodes", []) if n.get("feature_type") == "logit"
    }


def identity(doc: Mapping[str, Any], model: Any) -> tuple[str | None, bool]:
    """(why the file clearly belongs to another model or transcoder set, or None; whether the file
    names this server's transcoders).

    ``metadata.scan`` is the transcoder set in circuit-tracer's and our files, the model id in
    Neuronpedia's (and in ours when the graph had no transcoder id). A scan equal to neither the
    loaded transcoders, nor the model, nor (by final path component) a copy of either is a clear
    mismatch. Logit nodes sit at layer ``n_layers + 1`` (`docs/graph-json.md` §5.2).
    """
    lm, tc = model.lm, model.transcoders
    metadata = doc.get("metadata", {})
    layers = _logit_layers(doc)
    if len(layers) == 1 and None not in layers:
        (layer,) = layers
        if layer != model.n_layers + 1:
            return (
                f"the graph's logit nodes sit at layer {layer}, so it has {layer - 1} layers, but "
                f"the model has {model.n_layers}"
            ), False
    info = metadata.get("info")
    recorded_model = info.get("model") if isinstance(info, Mapping) else None
    if (isinstance(recorded_model, str) and recorded_model and not same_ref(recorded_model, lm.name)
            and _last_part(recorded_model) != _last_part(lm.name)):  # a copy elsewhere: unverified
        return (
            f"the graph was traced with model {recorded_model!r} (metadata.info.model) but the "
            f"server holds {lm.name!r}"
        ), False
    scan = metadata.get("scan")
    listed = metadata.get("transcoder_list")
    if isinstance(scan, str) and scan.startswith("custom-") and isinstance(listed, list) and listed:
        if isinstance(tc.scan, (list, tuple)):
            same = len(listed) == len(tc.scan) and all(map(same_ref, listed, tc.scan))
            if same:
                return None, True
            return (
                f"the graph was traced with transcoders {listed!r} but the server holds "
                f"{list(tc.scan)!r}"
            ), False
        return None, False
    if not isinstance(scan, str) or not scan:
        return None, False
    if same_ref(scan, tc.scan):
        return None, True
    related = {_last_part(lm.name), _last_part(tc.scan if isinstance(tc.scan, str) else None)}
    if same_ref(scan, lm.name) or _last_part(scan) in related - {None}:
        return None, False
    return (
        f"the graph was traced with transcoders {scan!r} (metadata.scan) but the server holds "
        f"model {lm.name!r} with transcoders {tc.scan!r}"
    ), False


# ---------------------------------------------------------------------- range checks
def check_ranges(
    features: Mapping[str, tuple[int, int, int]], doc: Mapping[str, Any], n_positions: int,
    model: Any,
) -> None:
    """Every feature node must name a layer and feature the loaded transcoders have and a
    position of the prompt; the prompt must fit the model's context."""
    lm, tc = model.lm, model.transcoders
    if lm.max_positions is not None and n_positions > lm.max_positions:
        raise JsonGraphRefused(
            f"the prompt has {n_positions} tokens, more than model {lm.name!r} accepts "
            f"({lm.max_positions} positions)"
        )
    for node_id, (layer, pos, feat) in features.items():
        if layer >= tc.n_layers:
            raise JsonGraphRefused(
                f"feature node {node_id!r} is at layer {layer}, but the loaded transcoders have "
                f"{tc.n_layers} layers (0..{tc.n_layers - 1})"
            )
        if feat >= tc.n_features:
            raise JsonGraphRefused(
                f"feature node {node_id!r} names feature {feat}, but the loaded transcoders have "
                f"{tc.n_features} features per layer (0..{tc.n_features - 1})"
            )
        if pos >= n_positions:
            raise JsonGraphRefused(
                f"feature node {node_id!r} is at position {pos}, but the prompt has "
                f"{n_positions} tokens"
            )
    logit_positions = {
        _int(n.get("ctx_idx")) for n in doc.get("nodes", []) if n.get("feature_type") == "logit"
    }
    if logit_positions - {n_positions - 1, None}:
        found = sorted(p for p in logit_positions if p is not None)
        raise JsonGraphRefused(
            f"the logit nodes sit at position(s) {found}, "
            f"but metadata.prompt_tokens has {n_positions} tokens (logits belong to the last)"
        )


# ---------------------------------------------------------------------- entry point
def adapt(doc: Mapping[str, Any], model: Any) -> JsonSteerable:
    """A `JsonSteerable` for ``doc`` (a graph-JSON document as `read_graph_json` normalises it),
    or `JsonGraphRefused` saying why the loaded ``model`` must not steer it."""
    if not isinstance(doc.get("metadata"), Mapping):
        raise JsonGraphRefused("the file has no metadata object")
    why, verified = identity(doc, model)
    if why is not None:
        raise JsonGraphRefused(why)
    features, kinds, embeddings = classify_nodes(doc)
    n_positions = len(prompt_tokens(doc["metadata"]))
    check_ranges(features, doc, n_positions, model)
    input_ids, source = recover_input_ids(doc, model.lm, embeddings)
    scan = doc["metadata"].get("scan")
    return JsonSteerable(
        input_ids=input_ids,
        tokens_from=source,
        features=features,
        kinds=kinds,
        n_layers=model.n_layers,
        scan=scan if isinstance(scan, str) else None,
        warning=None if verified else UNVERIFIED_WARNING,
    )
