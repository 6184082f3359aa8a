"""Compare two attribution graphs: which features and edges appear, disappear or change most in
influence, and what happens to the target.

Alignment. Two prompts rarely have the same tokens at the same positions, so nodes are matched
through their positions' *roles*:

* positions are aligned by a longest-matching-blocks diff of the two token-id sequences
  (`difflib.SequenceMatcher`): equal runs are "same token"; a replaced run of equal length pairs
  its positions in order ("substituted": "dallas" against "oakland" in the same template);
  anything else is "only a" / "only b";
* the last positions, where the next token is predicted, are always paired ("last");
* a feature node is keyed by (layer, feature, aligned position), an error node by (layer,
  aligned position), a token node by its aligned position;
* logit targets are paired by their label (the same token, or the same logit difference); the
  targets left over are paired in rank order ("rank k": the first target of each graph is its
  answer, so "austin" in one graph and "sacramento" in the other are both "the answer").

Quantities. A node's `influence` is its influence on the graph's targets (`prune.node_influence`:
the sum over paths of products of row-normalised |edge| weights, weighted by target
probability), which is comparable across graphs because both are normalised the same way. An
edge's `weight` is the direct effect (the adjacency entry) and its `influence` the score pruning
ranks edges by: `|A[t,s]| / Σ_s' |A[t,s']| · (influence[t] + w[t])`. Nodes and edges are taken from
the pruned graphs (either one keeps them); values in the other graph are read from its full,
unpruned adjacency, so a node that only fell under the threshold there still shows its value.

Everything in `GraphComparison.to_json()` is plain JSON (docs/graph-comparison.md documents every
field), so the explorer can draw one layout with both graphs' nodes.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import torch

from circuit_atlas.graph.graph import Graph
from circuit_atlas.graph.prune import node_influence, prune
from circuit_atlas.graph.scores import graph_scores

Labels = Mapping[tuple[int, int], str]


# ---------------------------------------------------------------------- result records
@dataclass(frozen=True)
class AlignedPosition:
    """One column of the shared layout: a position of `a`, of `b`, or of both."""

    key: str
    role: str  # "same token" | "substituted" | "last" | "only a" | "only b"
    a: int | None
    b: int | None
    token_a: str | None
    token_b: str | None


@dataclass(frozen=True)
class AlignedLogit:
    """A logit target of `a`, of `b`, or of both (paired by label, then by rank)."""

    key: str
    role: str  # "same token" | "rank k" | "only a" | "only b"
    a: int | None  # index in the graph's target list
    b: int | None
    token_a: str | None
    token_b: str | None
    probability_a: float | None
    probability_b: float | None
    node_id_a: str | None
    node_id_b: str | None


@dataclass(frozen=True)
class NodeDiff:
    """One node of the union of the two pruned graphs."""

    key: str
    kind: str  # "feature" | "error" | "token" | "logit"
    layer: int | None
    feature: int | None
    position: str  # an AlignedPosition key, or a logit's AlignedLogit key
    status: str  # "both" | "only a" | "only b": kept by pruning in which graph
    node_id_a: str | None
    node_id_b: str | None
    influence_a: float
    influence_b: float
    delta: float  # influence_b - influence_a
    activation_a: float | None
    activation_b: float | None
    active_a: bool  # the feature fires there at all (features); the node exists (others)
    active_b: bool
    label: str = ""


@dataclass(frozen=True)
class EdgeDiff:
    """One edge kept by pruning in either graph (source and target are NodeDiff keys)."""

    source: str
    target: str
    status: str  # "both" | "only a" | "only b"
    weight_a: float
    weight_b: float
    influence_a: float
    influence_b: float
    delta: float  # influence_b - influence_a


@dataclass(frozen=True)
class GraphSide:
    """What the comparison keeps of one graph."""

    prompt: str
    tokens: list[str]
    model: str
    replacement: float
    completeness: float
    n_feature_nodes: int
    n_kept_features: int


@dataclass(frozen=True)
class GraphComparison:
    """The result of `compare_graphs(a, b)`; `to_json()` gives it as plain JSON."""

    a: GraphSide
    b: GraphSide
    positions: list[AlignedPosition]
    logits: list[AlignedLogit]
    nodes: list[NodeDiff]
    edges: list[EdgeDiff]
    target: dict[str, Any]
    summary: dict[str, Any]
    settings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"format": "circuit-atlas-graph-comparison", "version": 1, **asdict(self)}

    # -- convenience views
    def features(self, status: str | None = None) -> list[NodeDiff]:
        """Feature nodes (optionally of one status), largest |delta| first."""
        return [n for n in self.nodes if n.kind == "feature" and (status is None or n.status == status)]

    def appeared(self) -> list[NodeDiff]:
        """Features kept only in `b`, most influential first."""
        return sorted(self.features("only b"), key=lambda n: -n.influence_b)

    def disappeared(self) -> list[NodeDiff]:
        """Features kept only in `a`, most influential first."""
        return sorted(self.features("only a"), key=lambda n: -n.influence_a)

    def changed(self, n: int = 10) -> list[NodeDiff]:
        """Features kept in both, by |change in influence|."""
        return sorted(self.features("both"), key=lambda d: -abs(d.delta))[:n]


# ---------------------------------------------------------------------- alignment
def align_positions(a: Graph, b: Graph) -> list[AlignedPosition]:
    """The shared columns of `a` and `b`, in reading order (see the module docstring)."""
    ids_a, ids_b = a.input_ids.tolist(), b.input_ids.tolist()
    last_a, last_b = len(ids_a) - 1, len(ids_b) - 1
    pairs: list[tuple[int | None, int | None, str]] = []
    matcher = difflib.SequenceMatcher(None, ids_a, ids_b, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal" or (op == "replace" and i2 - i1 == j2 - j1):
            role = "same token" if op == "equal" else "substituted"
            pairs += [(i, j, role) for i, j in zip(range(i1, i2), range(j1, j2))]
        else:
            pairs += [(i, None, "only a") for i in range(i1, i2)]
            pairs += [(None, j, "only b") for j in range(j1, j2)]
    # the answer positions always face each other; their old partners stand alone
    columns: list[tuple[int | None, int | None, str]] = []
    for i, j, role in pairs:
        if i == last_a or j == last_b:
            if i is not None and i != last_a:
                columns.append((i, None, "only a"))
            if j is not None and j != last_b:
                columns.append((None, j, "only b"))
        else:
            columns.append((i, j, role))
    columns.append((last_a, last_b, "last"))
    return [AlignedPosition(key=f"{_index_text(i)}:{_index_text(j)}", role=role, a=i, b=j,
                            token_a=None if i is None else a.tokens[i],
                            token_b=None if j is None else b.tokens[j])
            for i, j, role in columns]


def _index_text(index: int | None) -> str:
    return "-" if index is None else str(index)


def align_logits(a: Graph, b: Graph) -> list[AlignedLogit]:
    """Targets paired by label, the rest in rank order."""
    labels_a, labels_b = list(a.logit_tokens), list(b.logit_tokens)
    pairs: list[tuple[int | None, int | None, str]] = []
    used_b: set[int] = set()
    for i, label in enumerate(labels_a):
        j = next((j for j, other in enumerate(labels_b) if other == label and j not in used_b), None)
        if j is not None:
            used_b.add(j)
            pairs.append((i, j, "same token"))
    left_a = [i for i in range(len(labels_a)) if i not in {p[0] for p in pairs}]
    left_b = [j for j in range(len(labels_b)) if j not in used_b]
    for rank, (i, j) in enumerate(zip(left_a, left_b)):
        pairs.append((i, j, f"rank {rank}"))
    pairs += [(i, None, "only a") for i in left_a[len(left_b):]]
    pairs += [(None, j, "only b") for j in left_b[len(left_a):]]
    pairs.sort(key=lambda p: (p[0] if p[0] is not None else len(labels_a) + p[1]))
    out = []
    for i, j, role in pairs:
        key = (labels_a[i] if role == "same token" else role if role.startswith("rank")
               else f"{role}: {labels_a[i] if i is not None else labels_b[j]}")
        out.append(AlignedLogit(
            key=f"logit {key}", role=role, a=i, b=j,
            token_a=None if i is None else labels_a[i], token_b=None if j is None else labels_b[j],
            probability_a=None if i is None else float(a.logit_probabilities[i]),
            probability_b=None if j is None else float(b.logit_probabilities[j]),
            node_id_a=None if i is None else a.node_id(a.logit_index(i)),
            node_id_b=None if j is None else b.node_id(b.logit_index(j))))
    return out


# ---------------------------------------------------------------------- per-graph views
@dataclass
class _Side:
    """One graph with its node keys, influence and pruning."""

    graph: Graph
    keys: dict[str, int]  # node key -> dense index
    info: dict[str, tuple]  # node key -> (kind, layer, feature, position or logit key)
    influence: torch.Tensor
    kept: torch.Tensor  # bool [N]
    row_sums: torch.Tensor  # Σ|A| per storage row
    active: dict[tuple[int, int, int], float]  # (layer, position, feature) -> activation
    pruned: Any


def _side(graph: Graph, positions: list[AlignedPosition], logits: list[AlignedLogit], which: str,
          node_threshold: float, edge_threshold: float) -> _Side:
    pos_key = {getattr(p, which): p.key for p in positions if getattr(p, which) is not None}
    keys: dict[str, int] = {}
    info: dict[str, tuple] = {}

    def add(key: str, index: int, record: tuple) -> None:
        keys[key], info[key] = index, record

    for index, (layer, position, feature) in enumerate(graph.feature_coords.tolist()):
        key = pos_key[position]
        add(f"feature L{layer} #{feature} @{key}", index, ("feature", layer, feature, key))
    for layer in range(graph.n_layers):
        for position, key in pos_key.items():
            add(f"error L{layer} @{key}", graph.error_index(layer, position), ("error", layer, None, key))
    for position, key in pos_key.items():
        add(f"token @{key}", graph.token_index(position), ("token", None, None, key))
    for logit in logits:
        i = getattr(logit, which)
        if i is not None:
            add(logit.key, graph.logit_index(i), ("logit", None, None, logit.key))
    pruned = prune(graph, node_threshold, edge_threshold)
    active = {tuple(c): float(v) for c, v in zip(graph.active_features.tolist(),
                                                 graph.activation_values.tolist())}
    return _Side(graph, keys, info, node_influence(graph), pruned.node_mask,
                 graph.adjacency.abs().sum(dim=1), active, pruned)


# ---------------------------------------------------------------------- the comparison
def compare_graphs(a: Graph, b: Graph, *, node_threshold: float = 0.8, edge_threshold: float = 0.98,
                   labels: Labels | None = None) -> GraphComparison:
    """Compare graph `a` with graph `b` (see the module docstring for what is aligned and how).

    `node_threshold` / `edge_threshold`: the pruning that decides which nodes and edges are
    listed (kept in either graph). `labels`: feature labels keyed (layer, feature), copied into
    the node records.
    """
    positions, logits = align_positions(a, b), align_logits(a, b)
    side_a = _side(a, positions, logits, "a", node_threshold, edge_threshold)
    side_b = _side(b, positions, logits, "b", node_threshold, edge_threshold)
    positions_by_key = {p.key: p for p in positions}
    nodes = _node_diffs(side_a, side_b, positions_by_key, labels or {})
    edges = _edge_diffs(side_a, side_b)
    return GraphComparison(
        a=_graph_side(side_a), b=_graph_side(side_b), positions=positions, logits=logits,
        nodes=nodes, edges=edges, target=_target(logits, nodes),
        summary=_summary(nodes, edges),
        settings={"node_threshold": node_threshold, "edge_threshold": edge_threshold})


def _node_diffs(side_a: _Side, side_b: _Side, positions: dict[str, AlignedPosition],
                labels: Labels) -> list[NodeDiff]:
    kept = [k for k, i in side_a.keys.items() if bool(side_a.kept[i])]
    kept += [k for k, i in side_b.keys.items() if bool(side_b.kept[i])]
    out = []
    for key in dict.fromkeys(kept):
        ia, ib = side_a.keys.get(key), side_b.keys.get(key)
        kind, layer, feature, position = (side_a.info.get(key) or side_b.info[key])
        kept_a = ia is not None and bool(side_a.kept[ia])
        kept_b = ib is not None and bool(side_b.kept[ib])
        infl_a = float(side_a.influence[ia]) if ia is not None else 0.0
        infl_b = float(side_b.influence[ib]) if ib is not None else 0.0
        act_a = _activation(side_a, kind, layer, feature, positions.get(position), "a")
        act_b = _activation(side_b, kind, layer, feature, positions.get(position), "b")
        out.append(NodeDiff(
            key=key, kind=kind, layer=layer, feature=feature, position=position,
            status="both" if kept_a and kept_b else "only a" if kept_a else "only b",
            node_id_a=None if ia is None else side_a.graph.node_id(ia),
            node_id_b=None if ib is None else side_b.graph.node_id(ib),
            influence_a=infl_a, influence_b=infl_b, delta=infl_b - infl_a,
            activation_a=act_a, activation_b=act_b,
            active_a=ia is not None or act_a is not None, active_b=ib is not None or act_b is not None,
            label=labels.get((layer, feature), "") if kind == "feature" else ""))
    out.sort(key=lambda n: -abs(n.delta))
    return out


def _activation(side: _Side, kind: str, layer, feature, position: AlignedPosition | None,
                which: str) -> float | None:
    """A feature's activation at the aligned position (also when it has no node there)."""
    if kind != "feature" or position is None or getattr(position, which) is None:
        return None
    return side.active.get((layer, getattr(position, which), feature))


def _edge_influence(side: _Side, target: int, source: int) -> tuple[float, float]:
    """(weight, pruning score) of the edge source -> target in one graph's full adjacency."""
    graph = side.graph
    row = graph.storage_row(target)
    if row is None or source >= graph.n_sources:
        return 0.0, 0.0
    weight = float(graph.adjacency[row, source])
    total = float(side.row_sums[row])
    w_target = float(graph.logit_weights[target]) + float(side.influence[target])
    return weight, (abs(weight) / total * w_target) if total > 0 else 0.0


def _edge_diffs(side_a: _Side, side_b: _Side) -> list[EdgeDiff]:
    index_key = {"a": {i: k for k, i in side_a.keys.items()}, "b": {i: k for k, i in side_b.keys.items()}}
    kept: dict[tuple[str, str], set[str]] = {}
    for name, side in (("a", side_a), ("b", side_b)):
        targets, sources, _ = side.pruned.kept_edges()
        both = side.kept[targets] & side.kept[sources]
        for t, s in zip(targets[both].tolist(), sources[both].tolist()):
            tk, sk = index_key[name].get(t), index_key[name].get(s)
            if tk is not None and sk is not None:
                kept.setdefault((sk, tk), set()).add(name)
    out = []
    for (sk, tk), where in kept.items():
        values = {}
        for name, side in (("a", side_a), ("b", side_b)):
            s, t = side.keys.get(sk), side.keys.get(tk)
            values[name] = _edge_influence(side, t, s) if s is not None and t is not None else (0.0, 0.0)
        out.append(EdgeDiff(source=sk, target=tk,
                            status="both" if len(where) == 2 else f"only {next(iter(where))}",
                            weight_a=values["a"][0], weight_b=values["b"][0],
                            influence_a=values["a"][1], influence_b=values["b"][1],
                            delta=values["b"][1] - values["a"][1]))
    out.sort(key=lambda e: -abs(e.delta))
    return out


def _graph_side(side: _Side) -> GraphSide:
    graph = side.graph
    scores = graph_scores(graph)
    return GraphSide(prompt=graph.prompt, tokens=list(graph.tokens), model=graph.model_name,
                     replacement=scores.replacement, completeness=scores.completeness,
                     n_feature_nodes=graph.n_selected,
                     n_kept_features=int(side.kept[:graph.n_selected].sum()))


def _target(logits: list[AlignedLogit], nodes: list[NodeDiff]) -> dict[str, Any]:
    """The first target of each graph (its answer) and the features that carry the change."""
    first = next((l for l in logits if l.role in ("same token", "rank 0") and
                  (l.probability_a is not None and l.probability_b is not None)), logits[0])
    features = [n for n in nodes if n.kind == "feature"]
    return {
        "key": first.key, "token_a": first.token_a, "token_b": first.token_b,
        "probability_a": first.probability_a, "probability_b": first.probability_b,
        "same_token": first.token_a == first.token_b,
        "strengthened": [n.key for n in sorted(features, key=lambda n: -n.delta)[:10] if n.delta > 0],
        "weakened": [n.key for n in sorted(features, key=lambda n: n.delta)[:10] if n.delta < 0],
    }


def _summary(nodes: list[NodeDiff], edges: list[EdgeDiff]) -> dict[str, Any]:
    """Counts by status, and the share of each graph's kept-feature influence that the features
    kept in both carry (1.0: the same circuit; 0.0: nothing in common)."""
    out: dict[str, Any] = {}
    for kind in ("feature", "error"):
        for status in ("both", "only a", "only b"):
            out[f"{kind}s {status}"] = sum(n.kind == kind and n.status == status for n in nodes)
    for status in ("both", "only a", "only b"):
        out[f"edges {status}"] = sum(e.status == status for e in edges)
    features = [n for n in nodes if n.kind == "feature"]
    for side in ("a", "b"):
        kept = [n for n in features if n.status in ("both", f"only {side}")]
        total = sum(getattr(n, f"influence_{side}") for n in kept)
        shared = sum(getattr(n, f"influence_{side}") for n in kept if n.status == "both")
        out[f"shared influence share {side}"] = shared / total if total > 0 else 0.0
    return out
