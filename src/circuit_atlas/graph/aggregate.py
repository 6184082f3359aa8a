"""Aggregate many attribution graphs: the features and edges that recur, and a "typical circuit".

A set of prompts built from one template ("the capital of the region containing <city> is")
gives graphs whose positions line up from the end: the last position is where every graph
predicts its answer, the one before it holds the city, and so on. So positions are aligned by
their offset from the end (`-1` is the answer position); graphs of different lengths share their
last `min(length)` positions, and earlier positions are left out.

For each (layer, feature, offset), over the n graphs:

* `frequency`: the share of graphs whose pruned graph keeps that feature node there;
* `active_frequency`: the share in which the feature fires there at all;
* `mean_influence`: its influence on the graph's targets (`prune.node_influence`), averaged over
  all n graphs (0 where it is not a node), and `mean_influence_when_kept`;
* `mean_activation`: the mean activation where it fires.

Edges between recurring features (and from tokens and errors into them) get the share of graphs
whose pruned graph keeps them and their mean weight over all graphs.

The typical circuit (`GraphAggregate.graph`) is a `Graph`: the features kept in at least
`min_frequency` of the graphs, every error and token node of the aligned positions, and one
target, "the answer" (each graph's first target). Its adjacency is the mean, over the graphs, of
the aligned adjacency entries (0 where a graph lacks the node), so pruning, scores and the
explorer work on it as on any traced graph. Token nodes whose token differs between graphs read
`a|b|c|…`; their ids are those of the first graph.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import torch

from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.graph.graph import Graph
from circuit_atlas.graph.prune import prune

Labels = Mapping[tuple[int, int], str]
MAX_SHOWN_TOKENS = 3


@dataclass(frozen=True)
class RecurringFeature:
    """A feature at one aligned position, over all graphs (see the module docstring)."""

    layer: int
    feature: int
    offset: int  # -1: the answer position
    token: str
    frequency: float
    active_frequency: float
    mean_influence: float
    mean_influence_when_kept: float
    mean_activation: float
    label: str = ""

    @property
    def key(self) -> str:
        return f"L{self.layer} #{self.feature} @{self.offset}"


@dataclass(frozen=True)
class RecurringEdge:
    """An edge between aligned nodes (keys like `RecurringFeature.key`, `token @-2`,
    `error L3 @-1`, `answer`), over all graphs."""

    source: str
    target: str
    frequency: float
    mean_weight: float
    mean_weight_when_kept: float


@dataclass(frozen=True)
class GraphAggregate:
    """The result of `aggregate_graphs`; `to_json()` omits the typical circuit's tensors."""

    n_graphs: int
    names: list[str]
    tokens: list[str]  # aligned positions, first to last (offsets -len .. -1)
    answers: dict[str, int]  # each graph's first target, counted
    features: list[RecurringFeature]
    edges: list[RecurringEdge]
    graph: Graph
    settings: dict[str, float] = field(default_factory=dict)

    def at_answer(self) -> list[RecurringFeature]:
        """Features at the answer position, by mean influence."""
        return [f for f in self.features if f.offset == -1]

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "graph"}
        data["features"] = [{**asdict(f), "key": f.key} for f in self.features]
        return {"format": "circuit-atlas-graph-aggregate", "version": 1, **data}


# ---------------------------------------------------------------------- per graph
@dataclass
class _Summary:
    """What aggregation reads from one graph."""

    graph: Graph
    start: int  # position of offset -n_positions
    influence: torch.Tensor
    kept: torch.Tensor
    edges: set[tuple[int, int]]  # kept (target, source) dense pairs
    active: dict[tuple[int, int, int], float]  # (layer, offset, feature) -> activation
    nodes: dict[tuple[int, int, int], int]  # (layer, offset, feature) -> dense index


def _summarise(graph: Graph, n_positions: int, node_threshold: float, edge_threshold: float) -> _Summary:
    start = graph.n_positions - n_positions
    pruned = prune(graph, node_threshold, edge_threshold)
    targets, sources, _ = pruned.kept_edges()
    keep = pruned.node_mask[targets] & pruned.node_mask[sources]
    edges = set(zip(targets[keep].tolist(), sources[keep].tolist()))
    offset = lambda position: position - graph.n_positions  # noqa: E731
    active = {(layer, offset(pos), feat): value for (layer, pos, feat), value
              in zip(graph.active_features.tolist(), graph.activation_values.tolist()) if pos >= start}
    nodes = {(layer, offset(pos), feat): index
             for index, (layer, pos, feat) in enumerate(graph.feature_coords.tolist()) if pos >= start}
    return _Summary(graph, start, pruned.node_influence, pruned.node_mask, edges, active, nodes)


def _check_same_model(graphs: Sequence[Graph]) -> None:
    first = graphs[0]
    for i, graph in enumerate(graphs[1:], start=1):
        if (graph.n_layers, graph.model_name, graph.transcoder_scan) != (
                first.n_layers, first.model_name, first.transcoder_scan):
            raise CircuitAtlasError(
                f"graph {i} was traced with {graph.model_name!r} / {graph.transcoder_scan!r} "
                f"({graph.n_layers} layers), graph 0 with {first.model_name!r} / "
                f"{first.transcoder_scan!r} ({first.n_layers} layers); aggregate graphs of one "
                "model and transcoder set")


def _aligned_tokens(graphs: Sequence[Graph], n_positions: int) -> tuple[list[str], list[int]]:
    tokens, ids = [], []
    for offset in range(-n_positions, 0):
        seen = list(dict.fromkeys(g.tokens[g.n_positions + offset] for g in graphs))
        ids.append(int(graphs[0].input_ids[graphs[0].n_positions + offset]))
        shown = "|".join(seen[:MAX_SHOWN_TOKENS]) + ("|…" if len(seen) > MAX_SHOWN_TOKENS else "")
        tokens.append(seen[0] if len(seen) == 1 else shown)
    return tokens, ids


# ---------------------------------------------------------------------- aggregation
def aggregate_graphs(graphs: Sequence[Graph], *, names: Sequence[str] | None = None,
                     node_threshold: float = 0.8, edge_threshold: float = 0.98,
                     min_frequency: float = 0.5, labels: Labels | None = None) -> GraphAggregate:
    """Recurring features and edges of `graphs`, and their typical circuit (module docstring).

    `min_frequency`: share of graphs that must keep a feature for it to join the typical circuit
    (and an edge for it to be listed). `labels`: feature labels keyed (layer, feature).
    """
    graphs = list(graphs)
    if not graphs:
        raise CircuitAtlasError("aggregate_graphs needs at least one graph")
    if not 0.0 < min_frequency <= 1.0:
        raise CircuitAtlasError(f"min_frequency must lie in (0, 1], got {min_frequency}")
    _check_same_model(graphs)
    names = list(names) if names is not None else [g.prompt for g in graphs]
    n_positions = min(g.n_positions for g in graphs)
    summaries = [_summarise(g, n_positions, node_threshold, edge_threshold) for g in graphs]
    tokens, ids = _aligned_tokens(graphs, n_positions)
    features = _recurring_features(summaries, tokens, labels or {})
    chosen = [f for f in features if f.frequency >= min_frequency]
    typical = _typical_graph(summaries, chosen, tokens, ids, min_frequency)
    edges = _recurring_edges(summaries, chosen, n_positions, min_frequency)
    answers = Counter(g.logit_tokens[0] for g in graphs)
    return GraphAggregate(
        n_graphs=len(graphs), names=names, tokens=tokens, answers=dict(answers.most_common()),
        features=features, edges=edges, graph=typical,
        settings={"node_threshold": node_threshold, "edge_threshold": edge_threshold,
                  "min_frequency": min_frequency})


def _recurring_features(summaries: list[_Summary], tokens: list[str], labels: Labels) -> list[RecurringFeature]:
    n = len(summaries)
    sites = sorted({site for s in summaries for site, index in s.nodes.items() if bool(s.kept[index])})
    out = []
    for layer, offset, feature in sites:
        kept, influence, activations = 0, [], []
        for s in summaries:
            index = s.nodes.get((layer, offset, feature))
            if index is not None:
                influence.append(float(s.influence[index]))
                kept += bool(s.kept[index])
            if (layer, offset, feature) in s.active:
                activations.append(s.active[(layer, offset, feature)])
        kept_influence = [float(s.influence[s.nodes[(layer, offset, feature)]]) for s in summaries
                          if (layer, offset, feature) in s.nodes and bool(s.kept[s.nodes[(layer, offset, feature)]])]
        out.append(RecurringFeature(
            layer=layer, feature=feature, offset=offset, token=tokens[offset],
            frequency=kept / n, active_frequency=len(activations) / n,
            mean_influence=sum(influence) / n,
            mean_influence_when_kept=sum(kept_influence) / len(kept_influence) if kept_influence else 0.0,
            mean_activation=sum(activations) / len(activations) if activations else 0.0,
            label=labels.get((layer, feature), "")))
    out.sort(key=lambda f: -f.mean_influence)
    return out


def _node_key(graph: Graph, index: int, n_positions: int) -> str | None:
    """The aligned key of a dense node of `graph` (None outside the aligned positions)."""
    kind = graph.node_kind(index)
    if kind == "logit":
        return "answer" if index == graph.logit_index(0) else None
    if kind == "feature":
        layer, position, feature = (int(v) for v in graph.feature_coords[index])
        offset = position - graph.n_positions
        return f"L{layer} #{feature} @{offset}" if -offset <= n_positions else None
    if kind == "error":
        layer, position = divmod(index - graph.n_selected, graph.n_positions)
        offset = position - graph.n_positions
        return f"error L{layer} @{offset}" if -offset <= n_positions else None
    offset = index - graph.token_range.start - graph.n_positions
    return f"token @{offset}" if -offset <= n_positions else None


def _recurring_edges(summaries: list[_Summary], chosen: list[RecurringFeature], n_positions: int,
                     min_frequency: float) -> list[RecurringEdge]:
    """Kept edges into the chosen features and the answer, found in at least `min_frequency` of
    the graphs."""
    wanted = {f.key for f in chosen} | {"answer"}
    counts: Counter = Counter()
    weights: dict[tuple[str, str], list[float]] = {}
    for s in summaries:
        graph = s.graph
        for target, source in s.edges:
            t_key = _node_key(graph, target, n_positions)
            if t_key not in wanted:
                continue
            s_key = _node_key(graph, source, n_positions)
            if s_key is None or (s_key.startswith("L") and s_key not in wanted):
                continue
            counts[(s_key, t_key)] += 1
            weights.setdefault((s_key, t_key), []).append(float(graph.adjacency[graph.storage_row(target), source]))
    n = len(summaries)
    out = [RecurringEdge(source=s_key, target=t_key, frequency=count / n,
                         mean_weight=sum(weights[(s_key, t_key)]) / n,
                         mean_weight_when_kept=sum(weights[(s_key, t_key)]) / count)
           for (s_key, t_key), count in counts.items() if count / n >= min_frequency]
    out.sort(key=lambda e: (-e.frequency, -abs(e.mean_weight)))
    return out


def _typical_graph(summaries: list[_Summary], chosen: list[RecurringFeature], tokens: list[str],
                   ids: list[int], min_frequency: float) -> Graph:
    """The mean aligned adjacency over the chosen features (see the module docstring)."""
    first = summaries[0].graph
    P, L = len(tokens), first.n_layers
    sites = sorted((f.layer, f.offset + P, f.feature) for f in chosen)
    n_sel = len(sites)
    n_sources = n_sel + (L + 1) * P
    total = torch.zeros(n_sel + 1, n_sources, dtype=torch.float64)
    probability = 0.0
    for s in summaries:
        graph = s.graph
        shift = s.start  # position p of the typical graph is position p + shift of this one
        columns = torch.full((n_sources,), -1, dtype=torch.long)
        rows = torch.full((n_sel + 1,), -1, dtype=torch.long)
        for j, (layer, position, feature) in enumerate(sites):
            index = s.nodes.get((layer, position - P, feature))
            if index is not None:
                columns[j] = rows[j] = index
        for layer in range(L):
            for p in range(P):
                columns[n_sel + layer * P + p] = graph.error_index(layer, p + shift)
        for p in range(P):
            columns[n_sel + L * P + p] = graph.token_index(p + shift)
        rows[n_sel] = graph.storage_row(graph.logit_index(0))
        present = rows >= 0
        block = graph.adjacency[rows[present].clamp(min=0)][:, columns.clamp(min=0)].double()
        block[:, columns < 0] = 0.0
        total[present] += block
        probability += float(graph.logit_probabilities[0])
    n = len(summaries)
    mean = (total / n).float()
    active = torch.tensor(sites, dtype=torch.long).reshape(-1, 3)
    chosen_by_site = {(f.layer, f.offset + P, f.feature): f for f in chosen}
    answers = Counter(s.graph.logit_tokens[0] for s in summaries)
    label = ("answer: " + ", ".join(f"{t} ({c})" for t, c in answers.most_common(MAX_SHOWN_TOKENS))
             + (", …" if len(answers) > MAX_SHOWN_TOKENS else ""))
    return Graph(
        input_ids=torch.tensor(ids), tokens=tokens, prompt=f"typical circuit of {n} graphs: " + "".join(tokens),
        active_features=active,
        activation_values=torch.tensor([chosen_by_site[site].mean_activation for site in sites],
                                       dtype=torch.float32),
        selected_features=torch.arange(n_sel), logit_token_ids=torch.tensor([first.vocab_size]),
        logit_tokens=[label], logit_probabilities=torch.tensor([probability / n]),
        adjacency=mean, n_layers=L, vocab_size=first.vocab_size, model_name=first.model_name,
        transcoder_scan=first.transcoder_scan, transcoder_kind=first.transcoder_kind,
        settings={"aggregate": {"graphs": n, "min_frequency": min_frequency}})
