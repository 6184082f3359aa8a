"""`validate_graph`: how far does a graph's linear story match what interventions actually do?

For each node or supernode the graph makes two predictions about intervening on it:

- **downstream features**: each selected feature `t` downstream changes its pre-activation by
  `Σ_s c_s · A[t, s]`, where `A[t, s]` is the attribution edge (the effect of adding the source's
  activation-weighted decoder output) and `c_s = δ_s / a_s` the fraction of its activation that
  changes (ablation: `c = −1`; scaling by `k`: `c = k − 1`);
- **the target logit**: directly `Σ_s c_s · A[logit, s]`, and in total (through every path of the
  graph, signed, unnormalised) `Σ_s c_s · (A_logit (I − A_ff)⁻¹)[s]`. The graph's (normalised)
  influence of the node is reported alongside.

The intervention is then run and the actual changes are read out: pre-activations `⟨w_enc, Δx⟩`
at the input hook and the mean-centred pre-soft-cap logit `⟨Δh, W_U[tok] − mean W_U⟩`, the
quantities the edges are defined on. In constrained mode over all layers the direct predictions
are exact (correlation 1 up to float error); in free mode the gap shows the non-linearities the
graph leaves out.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from circuit_atlas.errors import InterventionError
from circuit_atlas.graph import Graph, node_influence
from circuit_atlas.interventions.intervene import Mode, check_mode, intervene
from circuit_atlas.interventions.spec import Supernode, graph_feature
from circuit_atlas.replacement import ReplacementModel

ACTIVATION_RTOL = 1e-3


@dataclass
class NodeValidation:
    """Prediction against actual effect for one node or supernode."""

    label: str
    node_ids: list[str]
    operation: str
    graph_influence: float
    predicted_logit_direct: float | None
    predicted_logit_total: float | None
    actual_logit: float | None
    target_nodes: torch.Tensor  # int64 [m]: dense indices of the downstream features compared
    predicted: torch.Tensor  # float64 [m]: predicted pre-activation changes
    actual: torch.Tensor  # float64 [m]: actual pre-activation changes

    @property
    def feature_correlation(self) -> float | None:
        return pearson(self.predicted, self.actual)

    @property
    def max_abs_error(self) -> float:
        return float((self.predicted - self.actual).abs().max()) if self.predicted.numel() else 0.0


@dataclass
class ValidationReport:
    """Per-node results and the summary correlations (Pearson; None when undefined)."""

    mode: Mode
    constrained_layers: tuple[int, ...] | None
    target: str
    nodes: list[NodeValidation]
    feature_correlation: float | None  # pooled over every (node, downstream feature) pair
    logit_correlation: float | None  # over nodes, using `logit_prediction`
    logit_prediction: str  # "direct" (constrained) or "total" (free)

    def table(self) -> str:
        """A fixed-width text table, one row per node, then the summary."""
        head = (f"{'node':<28} {'infl':>7} {'pred.direct':>12} {'pred.total':>11} {'actual':>10} "
                f"{'#feat':>6} {'feat.r':>7} {'max|err|':>9}")
        lines = [f"validation ({self.mode}; target {self.target})", head, "-" * len(head)]
        for row in self.nodes:
            lines.append(
                f"{row.label[:28]:<28} {row.graph_influence:>7.3f} {_fmt(row.predicted_logit_direct):>12} "
                f"{_fmt(row.predicted_logit_total):>11} {_fmt(row.actual_logit):>10} "
                f"{row.predicted.numel():>6} {_fmt(row.feature_correlation):>7} {row.max_abs_error:>9.2e}"
            )
        lines.append(f"feature-effect correlation: {_fmt(self.feature_correlation)}   "
                     f"logit correlation ({self.logit_prediction}): {_fmt(self.logit_correlation)}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "constrained_layers": None if self.constrained_layers is None else list(self.constrained_layers),
            "target": self.target,
            "feature_correlation": self.feature_correlation,
            "logit_correlation": self.logit_correlation,
            "logit_prediction": self.logit_prediction,
            "nodes": [
                {
                    "label": n.label, "node_ids": n.node_ids, "operation": n.operation,
                    "graph_influence": n.graph_influence,
                    "predicted_logit_direct": n.predicted_logit_direct,
                    "predicted_logit_total": n.predicted_logit_total, "actual_logit": n.actual_logit,
                    "n_features": int(n.predicted.numel()), "feature_correlation": n.feature_correlation,
                    "max_abs_error": n.max_abs_error,
                }
                for n in self.nodes
            ],
        }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def pearson(x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Pearson correlation in float64; None for fewer than two points or a constant input."""
    x, y = x.double().flatten(), y.double().flatten()
    if x.numel() < 2:
        return None
    x, y = x - x.mean(), y - y.mean()
    denominator = float(x.norm() * y.norm())
    if denominator == 0:
        return None
    return float((x @ y) / denominator)


def validate_graph(
    model: ReplacementModel,
    graph: Graph,
    nodes: Iterable[int | str | Supernode | Iterable[int | str]],
    *,
    mode: Mode = "constrained",
    constrained_layers: Iterable[int] | None = None,
    freeze_attention: bool = False,
    target: int = 0,
    progress: bool = True,
) -> ValidationReport:
    """Intervene on each of `nodes` of `graph` and compare with the graph's predictions.

    `nodes`: feature nodes by dense index or node id (ablated), lists of them (ablated together),
    or `Supernode`s whose members are graph features (their own value / scale / ablate is used).
    `target`: which of the graph's logit targets to follow (index into `graph.logit_tokens`).
    """
    mode, layers = check_mode(mode, constrained_layers, model.n_layers)
    if not 0 <= target < graph.n_logits:
        raise InterventionError(f"target {target} is out of range: the graph has {graph.n_logits} logit targets")
    _check_graph(model, graph)
    run = model.run(graph.input_ids.to(model.lm.device))
    context = _GraphContext(model, graph, target)
    groups = [_resolve(graph, item) for item in nodes]
    if not groups:
        raise InterventionError("validate_graph needs at least one node or supernode")
    rows = []
    for label, columns, supernode in tqdm(groups, desc="validating nodes", disable=not progress, leave=False):
        _check_activations(graph, run, columns)
        result = intervene(model, graph.input_ids, supernode, mode=mode, constrained_layers=layers,
                           freeze_attention=freeze_attention, run=run)
        rows.append(context.compare(label, columns, supernode, result))
    prediction = "direct" if mode == "constrained" else "total"
    return _summarise(mode, layers, graph.logit_tokens[target], rows, prediction)


def _summarise(mode, layers, target_label, rows: list[NodeValidation], prediction: str) -> ValidationReport:
    predicted = torch.cat([r.predicted for r in rows])
    actual = torch.cat([r.actual for r in rows])
    pairs = [(getattr(r, f"predicted_logit_{prediction}"), r.actual_logit) for r in rows]
    pairs = [(p, a) for p, a in pairs if p is not None and a is not None]
    logit_r = pearson(*(torch.tensor(v, dtype=torch.float64) for v in zip(*pairs))) if len(pairs) >= 2 else None
    return ValidationReport(
        mode=mode,
        constrained_layers=layers,
        target=target_label,
        nodes=rows,
        feature_correlation=pearson(predicted, actual),
        logit_correlation=logit_r,
        logit_prediction=prediction,
    )


def _check_graph(model, graph) -> None:
    if graph.n_layers != model.n_layers:
        raise InterventionError(
            f"the graph has {graph.n_layers} layers, the model {model.n_layers}: it was traced on another model"
        )
    if graph.active_features.numel() and int(graph.active_features[:, 2].max()) >= model.transcoders.n_features:
        raise InterventionError("the graph names features beyond the transcoders' n_features: other transcoders?")


def _resolve(graph, item) -> tuple[str, torch.Tensor, Supernode]:
    """(label, graph feature columns, the supernode to apply) for one requested item."""
    if isinstance(item, Supernode):
        columns = []
        for layer, position, feature in item.members:
            columns.append(_column_of(graph, layer, position, feature))
        label = item.name or f"supernode of {len(columns)}"
        return label, torch.tensor(columns, dtype=torch.long), item
    single = isinstance(item, (numbers.Integral, str)) or (isinstance(item, torch.Tensor) and item.dim() == 0)
    members = [item] if single else list(item)
    if not members:
        raise InterventionError("an empty list of nodes was given to validate_graph")
    triples = [graph_feature(graph, node) for node in members]
    columns = torch.tensor([_column_of(graph, *t) for t in triples], dtype=torch.long)
    label = graph.node_id(int(columns[0])) if len(members) == 1 else f"group of {len(members)}"
    return label, columns, Supernode(triples, ablate=True, name=label)


def _column_of(graph, layer, position, feature) -> int:
    if not isinstance(position, int):
        raise InterventionError(
            f"supernode member ({layer}, {position!r}, {feature}): validation needs single positions"
        )
    match = (graph.feature_coords == torch.tensor([layer, position, feature])).all(dim=1).nonzero()
    if match.numel() == 0:
        raise InterventionError(
            f"feature (layer {layer}, position {position}, feature {feature}) is not a node of the graph"
        )
    return int(match[0, 0])


def _check_activations(graph, run, columns: torch.Tensor) -> None:
    """The model must reproduce the graph's activations, or its edges say nothing about it."""
    for column in columns.tolist():
        layer, position, feature = (int(v) for v in graph.feature_coords[column])
        expected = float(graph.selected_activations[column])
        got = float(run.activations[layer][position].to_dense()[feature])
        if abs(got - expected) > ACTIVATION_RTOL * max(1.0, abs(expected)):
            raise InterventionError(
                f"feature {graph.node_id(column)} has activation {got:.6g} in this model but "
                f"{expected:.6g} in the graph: the graph was traced with another model or transcoders"
            )


class _GraphContext:
    """What every comparison needs from the graph: edges, encoder rows, the logit direction."""

    def __init__(self, model, graph, target: int) -> None:
        self.graph = graph
        n_sel = graph.n_selected
        # float32 views of the stored graph: a float64 copy of the feature block could be ~0.5 GB
        self.feature_edges = graph.adjacency[:n_sel, :n_sel]
        self.logit_edges = graph.adjacency[n_sel + target, :n_sel]
        self.total = _total_effect(self.logit_edges, self.feature_edges).double()
        self.influence = node_influence(graph)[:n_sel].double()
        coords = graph.feature_coords
        tc = model.transcoders
        self.encoders = torch.zeros(n_sel, tc.d_model, dtype=torch.float32)
        for layer in torch.unique(coords[:, 0]).tolist():
            members = (coords[:, 0] == layer).nonzero().flatten()
            self.encoders[members] = tc.encoder_rows(layer, coords[members, 2]).float().cpu()
        self.logit_vector = None
        if not graph.is_virtual_logit(target):
            w_u = model.lm.unembedding.detach().double().cpu()
            self.logit_vector = w_u[int(graph.logit_token_ids[target])] - w_u.mean(0)

    def compare(self, label: str, columns: torch.Tensor, supernode: Supernode, result) -> NodeValidation:
        graph = self.graph
        coefficients = self._coefficients(columns, result)
        coords = graph.feature_coords
        downstream = self._downstream(columns)
        predicted = self.feature_edges[downstream][:, columns].double() @ coefficients
        layer, position = coords[downstream, 0], coords[downstream, 1]
        dx = (result.mlp_inputs - result.clean_mlp_inputs).float().cpu()[layer, position]
        actual = (dx * self.encoders[downstream]).sum(-1).double()
        actual_logit = None
        if self.logit_vector is not None:
            dh = (result.final_hidden[-1] - result.clean_final_hidden[-1]).double().cpu()
            actual_logit = float(dh @ self.logit_vector)
        return NodeValidation(
            label=label,
            node_ids=[graph.node_id(int(c)) for c in columns],
            operation=supernode.interventions()[0].op,
            graph_influence=float(self.influence[columns].sum()),
            predicted_logit_direct=float(self.logit_edges[columns].double() @ coefficients),
            predicted_logit_total=float(self.total[columns] @ coefficients),
            actual_logit=actual_logit,
            target_nodes=downstream,
            predicted=predicted,
            actual=actual,
        )

    def _coefficients(self, columns: torch.Tensor, result) -> torch.Tensor:
        """c_s = δ_s / a_s: the change applied, in units of the source's activation-weighted edge."""
        graph = self.graph
        applied = {}
        for item in result.applied:
            for p, f, b, a in zip(item.positions.tolist(), item.features.tolist(), item.before, item.after):
                applied[(item.layer, p, f)] = float(a - b)
        coefficients = []
        for column in columns.tolist():
            key = tuple(int(v) for v in graph.feature_coords[column])
            coefficients.append(applied.get(key, 0.0) / float(graph.selected_activations[column]))
        return torch.tensor(coefficients, dtype=torch.float64)

    def _downstream(self, columns: torch.Tensor) -> torch.Tensor:
        """Selected features in the causal cone of the node (later layer, same or later position)."""
        coords = self.graph.feature_coords
        first_layer = int(coords[columns, 0].min())
        first_position = int(coords[columns, 1].min())
        inside = (coords[:, 0] > first_layer) & (coords[:, 1] >= first_position)
        inside[columns] = False
        return inside.nonzero().flatten()


def _total_effect(logit_edges: torch.Tensor, feature_edges: torch.Tensor) -> torch.Tensor:
    """`A_logit (I − A_ff)⁻¹` by the series `q, q·A, q·A², …`, finite because the graph is a DAG."""
    total = logit_edges.clone()
    current = logit_edges
    for _ in range(feature_edges.shape[0] + 1):
        current = current @ feature_edges
        if not bool(current.any()):
            break
        total += current
    return total
