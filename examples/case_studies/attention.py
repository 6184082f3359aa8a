"""The attention case study: why the layer-0 region feature at "is" reads the city.

In the two-hop graph of "the capital of the region containing dallas is", the layer-0 feature
"texas (region, from context)" at the last position gets its largest input from the token
"dallas" one position earlier. That edge crosses positions, so it runs through layer-0 attention.
This module answers three questions with the library's tools, then intervenes.

1. **Which head?** `edge_heads` splits the edge city token -> *reader feature* over the heads that
   carry it. A question's reader feature is the layer-0 feature at the last position with the
   largest edge from the city token in the question's own graph (for dallas: L0 #479, "texas").
2. **Which terms?** `qk_attribution` explains the head's score from " is" (query) to the city
   (key), and to every other key of the prompt. At layer 0 the residual stream is the token
   embedding alone and the demo's Llama has no q/k biases, so each explanation is one pair: the
   query token x the key token. What that pair is selective for is measured by *sweeps* over the
   vocabulary with the same frozen-norm maps (`models.attention_probe.project_queries_keys`):
   every token placed at the city position as the key (`key_sweep`), and every token placed at
   the last position as the query (`query_sweep`).
3. **Does it cause it?** A *key edit* changes what one head sees as key at one position, with the
   norm denominator frozen at its clean value: that head's key there changes, nothing else (its
   query and value, the other heads and the MLPs read the clean stream; everything downstream is
   recomputed by the real model). The edits follow from the QK picture: the head's key at the
   city sees nothing of the city token (its key-side term removed), or sees a frame word instead
   (the word before the city, " containing"), or the city's key-side term is placed at another
   position. Controls: the key sees another city of another region, or a random vector of the
   city embedding's norm, or the frame-word edit is applied to the heads that do not carry the
   edge. Each outcome reads the head's attention to the city, the reader feature and the answer.

Every question has the same length: BOS at 0, the city at 7, " is" at 8. The edit and the sweeps
are written for the demo's architecture (Llama: an RMSNorm before attention, a bias-free key
projection, rotary embeddings applied after it, no position embedding added to the residual).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch

import circuit_atlas
from circuit_atlas.attribution.heads import EdgeHeads, HeadAttributor
from circuit_atlas.attribution.qk import QKExplainer
from circuit_atlas.demo.toyworld import TwoHopItem, World
from circuit_atlas.models.attention import AttentionCall, observe_attention
from circuit_atlas.models.attention_probe import project_queries_keys

from .codes import answer_word, first_token_id, share_true

LAYER = 0
CITY = 7  # the city's position in every composed question (BOS at 0)
QUERY = 8  # " is"
NEIGHBOUR = CITY - 1  # " containing", the word before the city
HALF = 0.5  # "lost": fell below half of its clean value


# ---------------------------------------------------------------------------------------------
# 1. Which head carries the edge city -> reader feature?


@dataclass(frozen=True)
class ReaderEdge:
    """The edge from the city token to the question's reader feature, split over heads."""

    item: TwoHopItem
    source: str  # the city token's node id, E_{token}_7
    feature: str  # the reader feature's node id, 0_{feature}_8
    heads: EdgeHeads

    @property
    def feature_index(self) -> int:
        return int(self.feature.split("_")[1])

    def ranked_heads(self) -> list[int]:
        """Layer-0 heads, the one carrying most of the edge first."""
        n_heads = self.heads.contributions.shape[1]
        carried = [row.head for row in self.heads.rows if row.layer == LAYER]
        return carried + [h for h in range(n_heads) if h not in carried]

    @property
    def top_head(self) -> int:
        return self.ranked_heads()[0]

    def share(self, head: int) -> float:
        """The part of the edge that `head` of layer 0 carries."""
        return self.heads.head(LAYER, head) / self.heads.edge if self.heads.edge else 0.0


def city_token_id(model, item: TwoHopItem) -> int:
    return first_token_id(model, item.city)


def reader_edge(model, item: TwoHopItem, *, graph=None) -> ReaderEdge:
    """Trace the question (unless `graph` is given), pick its reader feature and split the edge."""
    if graph is None:
        graph = circuit_atlas.attribute(model, item.prompt, progress=False)
    source = f"E_{city_token_id(model, item)}_{CITY}"
    s = graph.node_index(source)
    coords = graph.feature_coords
    readers = [i for i in range(graph.n_selected)
               if int(coords[i, 0]) == LAYER and int(coords[i, 1]) == QUERY]
    if not readers:
        raise ValueError(f"no layer-{LAYER} feature is active at the last position of "
                         f"{item.prompt!r}")
    best = max(readers, key=lambda i: float(graph.adjacency[graph.storage_row(i), s]))
    heads = HeadAttributor(model, graph).edge_heads(source, graph.node_id(best))
    return ReaderEdge(item, source, graph.node_id(best), heads)


# ---------------------------------------------------------------------------------------------
# 2. Which query-side and key-side terms make the head attend to the city?


@dataclass(frozen=True)
class KeyRow:
    """One key of the prompt as the head sees it from " is": its score, weight and strongest
    QK pair (at layer 0 the only non-zero one)."""

    position: int
    token: str
    score: float
    weight: float
    query_term: str
    key_term: str
    pair_value: float
    weight_effect: float


def prompt_keys(explainer: QKExplainer, head: int) -> list[KeyRow]:
    """`qk_attribution` of (layer 0, `head`, " is" -> k) for every key k of the prompt."""
    rows = []
    for key in range(QUERY + 1):
        qk = explainer.explain(LAYER, head, QUERY, key)
        top = qk.top_pairs(1)[0]
        rows.append(KeyRow(key, qk.key_token, qk.score, qk.attention_weight, top.query_term,
                           top.key_term, top.value, top.weight_effect))
    return rows


def inverse_rms(model, vectors: torch.Tensor) -> torch.Tensor:
    """The inverse RMS layer 0's input norm gives residual vectors `[n, d]` (RMSNorm: the
    residual at layer 0 is the token embedding alone, so this is the token's own scale)."""
    norm = model.lm.layer_module(LAYER, "input_layernorm")
    return torch.rsqrt(vectors.float().pow(2).mean(-1) + norm.variance_epsilon)


def clean_inverse_rms(run) -> torch.Tensor:
    """The clean pass's inverse RMS of layer 0's input norm at every position `[P]`."""
    path = next(p for p in run.record.norm_scales if p.endswith(f".{LAYER}.input_layernorm"))
    return run.record.norm_scales[path][0, :, 0].float()


def as_if_at(model, run, tokens: torch.Tensor, position: int) -> torch.Tensor:
    """Embeddings of `tokens`, rescaled so that layer 0's norm, frozen at `position`'s clean
    denominator, gives exactly what it gives the token itself: the residual vector of "this token
    stood at `position`" for the frozen-norm maps."""
    vectors = model.lm.token_vectors(tokens.to(model.lm.device)).detach().float()
    scale = inverse_rms(model, vectors) / clean_inverse_rms(run)[position]
    return vectors * scale[:, None]


def key_sweep(model, run, head: int) -> torch.Tensor:
    """`[V]`: the head's score from the prompt's " is" to each vocabulary token placed at the
    city position (layer 0 keys depend on the token and its position only)."""
    vocabulary = torch.arange(model.lm.vocab_size)
    projection = project_queries_keys(
        model.lm, run.record, LAYER, query_position=QUERY, key_position=CITY,
        query_vectors=run.token_vectors[QUERY][None].float(),
        key_vectors=as_if_at(model, run, vocabulary, CITY))
    return projection.scaling * (projection.key[:, head].double() @ projection.query[0, head].double())


def query_sweep(model, run, head: int) -> torch.Tensor:
    """`[V]`: the head's attention weight on the city when the last token (" is") is replaced by
    each vocabulary token, the rest of the prompt unchanged (its own key at the last position
    included in the softmax)."""
    vocabulary = torch.arange(model.lm.vocab_size)
    queries = as_if_at(model, run, vocabulary, QUERY)
    columns = []
    for key in range(QUERY + 1):
        keys = queries if key == QUERY else run.token_vectors[key][None].float()
        projection = project_queries_keys(model.lm, run.record, LAYER, query_position=QUERY,
                                          key_position=key, query_vectors=queries,
                                          key_vectors=keys)
        q, k = projection.query[:, head].double(), projection.key[:, head].double()
        columns.append((q * k).sum(-1) if key == QUERY else q @ k[0])
    scores = projection.scaling * torch.stack(columns, 1)  # [V, P]
    return torch.softmax(scores, -1)[:, CITY]


def percentile(values: torch.Tensor, ids: Sequence[int]) -> float:
    """Mean percentile (0-100) of `values[ids]` within all of `values`."""
    chosen = values[list(ids)]
    return float((chosen[:, None] > values[None, :]).double().mean() * 100)


# ---------------------------------------------------------------------------------------------
# 3. Key edits and what they do in the live model.


@dataclass(frozen=True)
class KeyEdit:
    """Add `vector` (residual space) to what head `head` of layer 0 reads as key at `position`."""

    head: int
    position: int
    vector: torch.Tensor


@contextmanager
def edited_keys(model, edits: Sequence[KeyEdit], inverse: torch.Tensor) -> Iterator[None]:
    """Apply `edits` inside the block, through a hook on layer 0's key projection.

    The key projection reads `gain * x * inverse[p]`; a vector v added to x with the denominator
    frozen adds `W_k (gain * v * inverse[p])` to the head's slice of the projection's output at
    p, before the rotary embedding (linear) is applied. `inverse` is the clean pass's `[P]`
    inverse RMS of the layer's input norm (`clean_inverse_rms`).
    """
    attention = model.lm.layer_module(LAYER, "self_attn")
    gain = model.lm.layer_module(LAYER, "input_layernorm").weight.detach()
    head_dim = attention.head_dim
    deltas = []
    for edit in edits:
        columns = slice(edit.head * head_dim, (edit.head + 1) * head_dim)
        normed = gain * edit.vector.to(gain) * inverse[edit.position].to(gain)
        deltas.append((edit.position, columns, attention.k_proj.weight.detach()[columns] @ normed))

    def hook(module, inputs, output):
        output = output.clone()
        for position, columns, delta in deltas:
            output[:, position, columns] += delta.to(output.dtype)
        return output

    with ExitStack() as stack:
        if deltas:
            handle = attention.k_proj.register_forward_hook(hook)
            stack.callback(handle.remove)
        yield


@dataclass(frozen=True)
class Reading:
    """One pass: every layer-0 head's pattern row from " is" and score for the city key, the
    reader feature's activation at the last position and the answer."""

    rows: tuple[tuple[float, ...], ...]  # [head][key position]
    city_scores: tuple[float, ...]  # [head]
    feature: float
    answer: str
    p_answer: float  # probability of the correct capital

    def weight(self, head: int, position: int = CITY) -> float:
        return self.rows[head][position]


def read_pass(model, tokens: torch.Tensor, feature: int, answer_id: int,
              edits: Sequence[KeyEdit] = (), inverse: torch.Tensor | None = None) -> Reading:
    """Run the real model (with `edits`) and read what `Reading` holds."""
    calls: dict[int, AttentionCall] = {}

    def keep(call: AttentionCall) -> None:
        if call.layer == LAYER:
            calls[LAYER] = call

    with torch.no_grad(), observe_attention(keep), edited_keys(model, edits, inverse):
        run = model.run(tokens)
    call = calls[LAYER]
    rows = call.pattern[0, :, QUERY].float()  # [H, P]
    scores = call.scaling * (call.query[0, :, QUERY].double() * call.key[0, :, CITY].double()).sum(-1)
    activation = run.activations.to_dense()[LAYER, QUERY, feature]
    probs = torch.softmax(run.logits[-1].float(), -1)
    top = int(probs.argmax())
    return Reading(tuple(tuple(r) for r in rows.tolist()), tuple(scores.tolist()),
                   float(activation), answer_word(model.tokenizer.convert_ids_to_tokens(top)),
                   float(probs[answer_id]))


@dataclass(frozen=True)
class EditOutcome:
    """One question under one condition: readings before and after the edits, for the head
    whose attention is reported."""

    item: TwoHopItem
    head: int
    clean: Reading
    edited: Reading

    @property
    def weight_ratio(self) -> float:
        return self.edited.weight(self.head) / max(self.clean.weight(self.head), 1e-12)

    @property
    def feature_ratio(self) -> float:
        return self.edited.feature / self.clean.feature if self.clean.feature > 0 else float("nan")

    @property
    def attention_lost(self) -> bool:
        """The head's weight on the city fell below half of its clean value."""
        return self.weight_ratio < HALF

    @property
    def feature_lost(self) -> bool:
        """The reader feature's activation fell below half of its clean value."""
        return self.clean.feature > 0 and self.edited.feature < HALF * self.clean.feature

    @property
    def clean_correct(self) -> bool:
        return self.clean.answer == self.item.answer

    @property
    def answer_lost(self) -> bool:
        """The model answered the capital before the edit and something else after."""
        return self.clean_correct and self.edited.answer != self.item.answer


def random_like(vector: torch.Tensor, seed: int) -> torch.Tensor:
    """A random direction (seeded) with the norm of `vector`."""
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(vector.shape, generator=generator, dtype=torch.float32)
    return direction / direction.norm() * vector.float().norm().cpu()


HEAD_ROLES = ("top", "second", "rest")  # per question, from the edge's head table
SEES = ("nothing", "city", "frame", "other_city", "random")


@dataclass(frozen=True)
class Condition:
    """A named key edit: the key of each head in `heads` (a role or a head index) at `position`
    sees `sees` instead of what stands there: "nothing" (its token's term removed), "city" (the
    question's city token), "frame" (the token before the city), "other_city" (a held-out city
    of another region) or "random" (a random vector of the city embedding's norm, added to the
    token there). The outcome reports the question's top head."""

    name: str
    heads: tuple[int | str, ...]
    sees: str
    position: int = CITY

    def __post_init__(self) -> None:
        if self.sees not in SEES:
            raise ValueError(f"sees must be one of {SEES}, got {self.sees!r}")
        for head in self.heads:
            if not isinstance(head, int) and head not in HEAD_ROLES:
                raise ValueError(f"a head is an index or one of {HEAD_ROLES}, got {head!r}")

    @property
    def random(self) -> bool:
        return self.sees == "random"

    def resolve_heads(self, edge: ReaderEdge) -> list[int]:
        ranked = edge.ranked_heads()
        heads: list[int] = []
        for role in self.heads:
            if role == "top":
                heads.append(ranked[0])
            elif role == "second":
                heads.append(ranked[1])
            elif role == "rest":
                heads += ranked[2:]
            else:
                heads.append(int(role))
        return heads


@dataclass
class Question:
    """Everything the edits of one question need, computed once."""

    item: TwoHopItem
    edge: ReaderEdge
    tokens: torch.Tensor
    run: object
    inverse: torch.Tensor
    other_city: str
    clean: Reading

    @classmethod
    def build(cls, model, edge: ReaderEdge, other_city: str) -> "Question":
        item = edge.item
        tokens = model.tokenize(item.prompt)
        with torch.no_grad():
            run = model.run(tokens)
        answer = first_token_id(model, item.answer)
        return cls(item, edge, tokens, run, clean_inverse_rms(run), other_city,
                   read_pass(model, tokens, edge.feature_index, answer))

    def vector(self, model, condition: Condition, seed: int) -> torch.Tensor:
        """What the key edit adds at the condition's position."""
        position = condition.position
        here = self.run.token_vectors[position].float()
        if condition.sees == "nothing":
            return -here
        if condition.sees == "random":
            return random_like(self.run.token_vectors[CITY], seed).to(here.device)
        token = {"city": int(self.tokens[CITY]), "frame": int(self.tokens[NEIGHBOUR]),
                 "other_city": first_token_id(model, self.other_city)}[condition.sees]
        return as_if_at(model, self.run, torch.tensor([token]), position)[0] - here

    def edit(self, model, condition: Condition, seed: int = 0) -> EditOutcome:
        vector = self.vector(model, condition, seed)
        edits = [KeyEdit(h, condition.position, vector)
                 for h in condition.resolve_heads(self.edge)]
        edited = read_pass(model, self.tokens, self.edge.feature_index,
                           first_token_id(model, self.item.answer), edits, self.inverse)
        return EditOutcome(self.item, self.edge.top_head, self.clean, edited)


def other_cities(world: World, items: Sequence[TwoHopItem]) -> dict[str, str]:
    """For each question, a held-out city of its swap region (another region's city that the
    model never saw in a composed question either)."""
    return {item.city: next(c for c in world.held_out_cities
                            if world.city_region[c] == item.swap_region)
            for item in items}


def conditions() -> list[Condition]:
    """The edits of the case study (see the module docstring)."""
    return [
        Condition("key at the city sees a frame word (' containing')", ("top",), "frame"),
        Condition("key at the city sees nothing of the city token", ("top",), "nothing"),
        Condition("control: key sees another held-out city", ("top",), "other_city"),
        Condition("control: random vector (city embedding's norm) added", ("top",), "random"),
        Condition("control: frame-word edit on the non-carrying heads", ("rest",), "frame"),
        Condition("frame-word edit on both carrying heads", ("top", "second"), "frame"),
        Condition("key at ' containing' sees the city", ("top",), "city", NEIGHBOUR),
        Condition("control: random vector added at ' containing'", ("top",), "random", NEIGHBOUR),
    ]


def run_condition(model, questions: Iterable[Question], condition: Condition, *,
                  seeds: Sequence[int] = (0,)) -> list[EditOutcome]:
    """`condition` on every question; random conditions once per seed."""
    return [question.edit(model, condition, seed) for question in questions
            for seed in (seeds if condition.random else seeds[:1])]


def _median(values: Iterable[float]) -> float:
    kept = sorted(v for v in values if v == v)
    return kept[len(kept) // 2] if kept else float("nan")


def rates(outcomes: Sequence[EditOutcome], position: int = CITY) -> dict[str, float]:
    """Shares of outcomes where the top head's attention to the city, the reader feature and the
    answer were lost; median ratios; and the head's mean weight at `position` before / after."""
    return {"attention_lost": share_true(o.attention_lost for o in outcomes),
            "feature_lost": share_true(o.feature_lost for o in outcomes),
            "answer_lost": share_true(o.answer_lost for o in outcomes),
            "median_weight_ratio": _median(o.weight_ratio for o in outcomes),
            "median_feature_ratio": _median(o.feature_ratio for o in outcomes),
            "mean_weight_at_position_before": sum(o.clean.weight(o.head, position)
                                                  for o in outcomes) / max(len(outcomes), 1),
            "mean_weight_at_position_after": sum(o.edited.weight(o.head, position)
                                                 for o in outcomes) / max(len(outcomes), 1)}
