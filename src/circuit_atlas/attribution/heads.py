"""Per-head edges: which attention heads carry an edge of an attribution graph.

In the local replacement model (attention patterns and norm denominators frozen, MLPs reduced to
their skip paths) an edge is a sum over paths from the source to the target. Attention is causal,
so a path only ever moves to later positions, one attention hop at a time, and each hop goes
through one (layer, head) and one pattern entry `A[query, key]`. We split the edge exactly by
assigning every path to one hop:

- `hop="last"` (default): the **last hop that changes position** — the head that brings the
  signal to the target's position. Its pattern entry is `A[target position, key]`, key ≠ target
  position. The weight of (layer l, head h, key k) is
  `A_lh[t, k] · ⟨∂φ/∂z_lh[t], J_lh[k]⟩`: the gradient of the target readout φ at the head's
  output z at the target position t (every path from there on stays at t) times the source's
  whole effect on the head's value at k, `J = ∂value/∂source · δ`.
- `hop="first"`: the **first hop that leaves the source's position** (query q ≠ source
  position s): `A_lh[q, s] · ⟨∂φ/∂z_lh[q], J_lh[s]⟩`, where the value at s is reached only by
  paths that never left s.
- same-position edges (source and target at one position) have no such hop: every path stays
  there. Paths with no attention at all form the `residual` (the residual stream and the MLP skip
  connections); the others are assigned to their last (or first) attention-to-self hop, with the
  other side taken in the model whose attention is switched off.

Each path gets exactly one hop, so the weights plus the residual sum to the edge. The source's
effect J is a Jacobian-vector product computed by double backward through the same frozen pass
the graph's edges come from (`ReplacementModel.frozen_forward`), and the heads' tensors are read
with `models.attention.observe_attention`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from circuit_atlas.models.language_model import unembedding_matrix
from circuit_atlas.errors import AttentionError
from circuit_atlas.models.attention import AttentionCall, observe_attention

HOPS = ("last", "first")
ACTIVATION_RTOL = 1e-3  # graph activations must match the model's this closely


class HeadWeight(NamedTuple):
    """One row of an edge's head table: (layer, head) carries `weight` of the edge.

    `query_position` / `key_position` name the pattern entry that carries most of it (for
    `hop="last"` the query is the target's position; for `hop="first"` the key is the source's):
    the place to ask `qk_attribution` why the head attends there.
    """

    layer: int
    head: int
    weight: float
    query_position: int
    key_position: int


@dataclass
class EdgeHeads:
    """An edge split over the attention heads that carry it (see the module docstring).

    `contributions[l, h, p]` is the weight of hops through head h of layer l at the pattern entry
    whose other end is position p (the key position for `hop="last"`, the query position for
    `hop="first"`). `residual` holds the paths without attention (same-position edges only).
    Iterating gives `HeadWeight` rows, strongest first; `total` equals `edge` up to rounding.
    """

    source: str
    target: str
    edge: float
    hop: str
    source_position: int
    target_position: int
    contributions: torch.Tensor
    residual: float = 0.0
    rows: list[HeadWeight] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rows = self._rows()

    def _rows(self) -> list[HeadWeight]:
        per_head = self.contributions.sum(-1)
        order = torch.argsort(per_head.abs().flatten(), descending=True, stable=True)
        n_heads = per_head.shape[1]
        rows = []
        for flat in order.tolist():
            layer, head = divmod(flat, n_heads)
            weight = float(per_head[layer, head])
            if weight == 0.0:
                continue
            other = int(self.contributions[layer, head].abs().argmax())
            if self.hop == "last":
                query, key = self.target_position, other
            else:
                query, key = other, self.source_position
            rows.append(HeadWeight(layer, head, weight, query, key))
        return rows

    @property
    def same_position(self) -> bool:
        return self.source_position == self.target_position

    @property
    def total(self) -> float:
        """Sum of every head's weight and the residual: the edge, recomputed."""
        return float(self.contributions.sum()) + self.residual

    def head(self, layer: int, head: int) -> float:
        """The weight head `head` of layer `layer` carries (0 when it carries none)."""
        n_layers, n_heads, _ = self.contributions.shape
        if not 0 <= layer < n_layers:
            raise AttentionError(f"layer {layer} is outside 0..{n_layers - 1}")
        if not 0 <= head < n_heads:
            raise AttentionError(f"head {head} is outside 0..{n_heads - 1}")
        return float(self.contributions[layer, head].sum())

    def by_position(self, layer: int, head: int) -> list[tuple[int, float]]:
        """(position, weight) of one head's hops, strongest first (key positions for
        `hop="last"`, query positions for `hop="first"`)."""
        self.head(layer, head)
        values = self.contributions[layer, head]
        order = torch.argsort(values.abs(), descending=True, stable=True)
        return [(int(p), float(values[p])) for p in order.tolist() if float(values[p]) != 0.0]

    def top(self, n: int = 10) -> list[HeadWeight]:
        return self.rows[:n]

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> HeadWeight:
        return self.rows[index]

    def to_json(self, top: int | None = None) -> dict[str, Any]:
        """Plain JSON types: the edge, the partition used, the residual and the head rows."""
        rows = self.rows if top is None else self.rows[:top]
        return {
            "source": self.source,
            "target": self.target,
            "edge": self.edge,
            "hop": self.hop,
            "source_position": self.source_position,
            "target_position": self.target_position,
            "residual": self.residual,
            "total": self.total,
            "heads": [row._asdict() for row in rows],
        }

    def __str__(self) -> str:
        lines = [f"edge {self.source} -> {self.target}: {self.edge:+.6g} "
                 f"(heads by {self.hop} cross-position hop; sum {self.total:+.6g})"]
        if self.same_position:
            lines.append(f"  residual (no attention)   {self.residual:+.6g}")
        for row in self.rows[:20]:
            lines.append(f"  L{row.layer}.H{row.head:<3} q{row.query_position} k{row.key_position}"
                         f"  {row.weight:+.6g}")
        if len(self.rows) > 20:
            lines.append(f"  ... {len(self.rows) - 20} more heads")
        return "\n".join(lines)


# ---------------------------------------------------------------------- graph ↔ model checks
def check_graph_model(model, graph, run=None) -> Any:
    """The clean run of the graph's prompt, after checking that `graph` was traced with `model`.

    Names, layer counts, vocabulary and transcoder width are compared first; then the
    activations of the graph's feature nodes must be those the model gives now (a graph traced
    with other weights or transcoders fails there even when the names match).
    """
    if graph.n_layers != model.n_layers:
        raise AttentionError(
            f"the graph has {graph.n_layers} layers but model {model.lm.name!r} has "
            f"{model.n_layers}: it was traced with another model (graph model: {graph.model_name!r})")
    if int(graph.input_ids.max()) >= model.lm.vocab_size:
        raise AttentionError(
            f"the graph's prompt holds token id {int(graph.input_ids.max())}, outside model "
            f"{model.lm.name!r}'s vocabulary 0..{model.lm.vocab_size - 1}: another model?")
    coords = graph.feature_coords
    if coords.numel() and int(coords[:, 2].max()) >= model.transcoders.n_features:
        raise AttentionError(
            f"the graph names feature {int(coords[:, 2].max())}, beyond the transcoders' "
            f"{model.transcoders.n_features} features: it was traced with other transcoders")
    if run is None:
        with torch.no_grad():
            run = model.run(graph.input_ids.to(model.lm.device))
    dense_at = {}
    expected = graph.selected_activations
    for column, (layer, position, feature) in enumerate(coords.tolist()):
        if (layer, position) not in dense_at:
            dense_at[(layer, position)] = run.activations[layer][position].to_dense().float().cpu()
        got = float(dense_at[(layer, position)][feature])
        want = float(expected[column])
        if abs(got - want) > ACTIVATION_RTOL * max(1.0, abs(want)):
            raise AttentionError(
                f"feature {graph.node_id(column)} has activation {got:.6g} in model "
                f"{model.lm.name!r} but {want:.6g} in the graph: the graph was traced with another "
                f"model or transcoders (graph: model {graph.model_name!r}, transcoders "
                f"{graph.transcoder_scan!r})")
    return run


def resolve_node(graph, node_id: str, role: str) -> int:
    """Dense index of `node_id`, which must be a possible `role` ("source" or "target")."""
    try:
        index = graph.node_index(str(node_id))
    except KeyError:
        example = graph.node_id(0) if graph.n_nodes else "?"
        raise AttentionError(
            f"{role} {node_id!r} is not a node of this graph; node ids look like {example!r} "
            "(features '{layer}_{feature}_{position}', errors '{layer}_-1_{position}', tokens "
            "'E_{token}_{position}', logits '{L+1}_{token}_{last position}')") from None
    kind = graph.node_kind(index)
    allowed = ("feature", "error", "token") if role == "source" else ("feature", "logit")
    if kind not in allowed:
        raise AttentionError(f"{role} {node_id!r} is a {kind} node; a {role} must be a "
                             f"{' or '.join(allowed)} node")
    return index


# ---------------------------------------------------------------------- computation
class HeadAttributor:
    """Per-head edges of one graph, sharing the clean run and the frozen pass between edges."""

    def __init__(self, model, graph, *, run=None) -> None:
        self.model, self.graph = model, graph
        self.run = check_graph_model(model, graph, run)
        self.tokens = self.run.tokens
        self._passes: dict[bool, tuple[Any, dict[int, AttentionCall]]] = {}

    def edge_heads(self, source: str, target: str, *, hop: str = "last") -> EdgeHeads:
        if hop not in HOPS:
            raise AttentionError(f"hop must be one of {HOPS}, got {hop!r}")
        graph = self.graph
        s = resolve_node(graph, source, "source")
        t = resolve_node(graph, target, "target")
        edge = float(graph.adjacency[graph.storage_row(t), s])
        source_position, deltas = self._source(s)
        target_position, readout = self._target(t)
        n_layers, n_positions = self.model.n_layers, graph.n_positions
        same = source_position == target_position
        full = self._pass(attention=True)
        gradients = self._head_gradients(full, readout)
        effects = self._source_effects(full, deltas, source_position)
        first_call = next(iter(full[1].values()))
        n_heads = first_call.pattern.shape[1]
        contributions = torch.zeros(n_layers, n_heads, n_positions, dtype=torch.float64,
                                    device=first_call.pattern.device)
        residual = 0.0
        if same:
            off = self._pass(attention=False)
            if hop == "last":
                gradients = self._head_gradients(off, readout)
            else:
                effects = self._source_effects(off, deltas, source_position)
            residual = self._readout_effect(off, readout, deltas, source_position)
        for layer, call in full[1].items():
            grad, effect = gradients.get(layer), effects.get(layer)
            if grad is None or effect is None:
                continue
            pattern = call.pattern[0].detach().double()
            g, e = grad[0].double(), effect[0].double()  # [H, P, hd]
            if same:
                p = source_position
                contributions[layer, :, p] = pattern[:, p, p] * (g[:, p] * e[:, p]).sum(-1)
            elif hop == "last":
                # A[h, t, k] · <g[h, t], e[h, k]> for every key k ≠ t
                dots = torch.einsum("hd,hkd->hk", g[:, target_position], e)
                contributions[layer] = pattern[:, target_position, :] * dots
                contributions[layer, :, target_position] = 0
            else:
                dots = torch.einsum("hqd,hd->hq", g, e[:, source_position])
                contributions[layer] = pattern[:, :, source_position] * dots
                contributions[layer, :, source_position] = 0
        return EdgeHeads(
            source=graph.node_id(s), target=graph.node_id(t), edge=edge, hop=hop,
            source_position=source_position, target_position=target_position,
            contributions=contributions.float().cpu(), residual=residual,
        )

    # --- sources and targets ------------------------------------------------------------------
    def _source(self, node: int) -> tuple[int, dict[int | None, torch.Tensor]]:
        """(position, vectors added by the source): output-hook layer -> [d]; None = embedding."""
        graph, run, tc = self.graph, self.run, self.model.transcoders
        kind = graph.node_kind(node)
        if kind == "feature":
            layer, position, feature = (int(v) for v in graph.feature_coords[node])
            activation = float(graph.selected_activations[node])
            rows = {k: activation * tc.decoder_rows(layer, torch.tensor([feature]), k)[0]
                    for k in tc.target_layers(layer)}
            return position, rows
        if kind == "error":
            layer, position = divmod(node - graph.n_selected, graph.n_positions)
            return position, {layer: run.errors[layer, position]}
        position = node - graph.token_range.start
        return position, {None: run.token_vectors[position]}

    def _target(self, node: int) -> tuple[int, tuple[int | None, int, torch.Tensor]]:
        """(position, readout (input-hook layer or None for the final norm, position, vector))."""
        graph, tc = self.graph, self.model.transcoders
        if graph.node_kind(node) == "feature":
            layer, position, feature = (int(v) for v in graph.feature_coords[node])
            return position, (layer, position, tc.encoder_rows(layer, torch.tensor([feature]))[0])
        i = node - graph.n_sources
        token = int(graph.logit_token_ids[i])
        if graph.is_virtual_logit(i):
            raise AttentionError(
                f"logit target {graph.node_id(node)!r} ({graph.logit_tokens[i]!r}) is a custom "
                "direction whose vector the graph does not store; per-head edges need a token "
                "logit target")
        w_u = unembedding_matrix(self.model.lm.hf_model).detach().float()
        position = graph.n_positions - 1
        return position, (None, position, w_u[token] - w_u.mean(0))

    # --- passes -----------------------------------------------------------------------------------
    def _pass(self, *, attention: bool):
        """The frozen pass (attention on, or every pattern zeroed) with its attention calls."""
        if attention not in self._passes:
            run = self.run
            if not attention:
                patterns = {l: torch.zeros_like(p) for l, p in run.record.attention_patterns.items()}
                run = dataclasses.replace(run, record=dataclasses.replace(run.record, attention_patterns=patterns))
            calls: dict[int, AttentionCall] = {}
            with observe_attention(lambda call: calls.__setitem__(call.layer, call)):
                frozen = self.model.frozen_forward(self.tokens, 1, run=run)
            self._passes[attention] = (frozen, calls)
        return self._passes[attention]

    @staticmethod
    def _readout_value(frozen, readout) -> torch.Tensor:
        layer, position, vector = readout
        tensor = frozen.final_hidden if layer is None else frozen.inputs[layer]
        return (tensor[0, position].float() * vector.to(tensor.device).float()).sum()

    def _head_gradients(self, passed, readout) -> dict[int, torch.Tensor]:
        """∂φ/∂(head outputs) of every layer, `[1, H, P, hd]`."""
        frozen, calls = passed
        layers = sorted(calls)
        phi = self._readout_value(frozen, readout)
        grads = torch.autograd.grad(phi, [calls[l].output for l in layers], retain_graph=True,
                                    allow_unused=True)
        return {l: g for l, g in zip(layers, grads) if g is not None}

    def _source_tensors(self, frozen, deltas) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        tensors, vectors = [], []
        for layer, vector in deltas.items():
            tensors.append(frozen.embeddings if layer is None else frozen.outputs[layer])
            vectors.append(vector)
        return tensors, vectors

    def _placed(self, tensor: torch.Tensor, vector: torch.Tensor, position: int) -> torch.Tensor:
        placed = torch.zeros_like(tensor)
        placed[0, position] = vector.to(device=tensor.device, dtype=tensor.dtype)
        return placed

    def _source_effects(self, passed, deltas, position: int) -> dict[int, torch.Tensor]:
        """The source's effect on every layer's head values, `[1, H, P, hd]` (a Jacobian-vector
        product by double backward: the pass is linear, so this is exact)."""
        frozen, calls = passed
        layers = sorted(calls)
        values = [calls[l].value for l in layers]
        probes = [torch.zeros_like(v, requires_grad=True) for v in values]
        tensors, vectors = self._source_tensors(frozen, deltas)
        with torch.enable_grad():
            pulled = torch.autograd.grad(values, tensors, grad_outputs=probes, retain_graph=True,
                                         create_graph=True, allow_unused=True)
            pairing = [(g * self._placed(t, v, position)).sum()
                       for g, t, v in zip(pulled, tensors, vectors) if g is not None]
            if not pairing:
                return {}
            effects = torch.autograd.grad(sum(pairing), probes, allow_unused=True)
        return {l: e.detach() for l, e in zip(layers, effects) if e is not None}

    def _readout_effect(self, passed, readout, deltas, position: int) -> float:
        """The source's whole effect on the readout in one pass (the edge of that model)."""
        frozen, _ = passed
        tensors, vectors = self._source_tensors(frozen, deltas)
        phi = self._readout_value(frozen, readout)
        grads = torch.autograd.grad(phi, tensors, retain_graph=True, allow_unused=True)
        return float(sum((g[0, position].float() * v.to(g.device).float()).sum()
                         for g, v in zip(grads, vectors) if g is not None))


def edge_heads(model, graph, source: str, target: str, *, hop: str = "last", run=None) -> EdgeHeads:
    """Split the graph's edge `source -> target` (node ids) over the attention heads carrying it.

    `model` is the `ReplacementModel` the graph was traced with (checked against the graph's
    activations); `hop` chooses the exact partition of multi-hop paths: "last" assigns each path
    to its last position-changing hop (the head that brings the signal to the target's position,
    the default), "first" to its first (the head that takes it away from the source's). The
    rows' weights plus `residual` (same-position edges: paths without attention) sum to the edge.
    """
    return HeadAttributor(model, graph, run=run).edge_heads(source, target, hop=hop)


__all__ = ["EdgeHeads", "HeadAttributor", "HeadWeight", "check_graph_model", "edge_heads",
           "resolve_node", "HOPS"]
