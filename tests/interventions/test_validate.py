"""The validation harness: graph predictions against actual interventions."""

from __future__ import annotations

import pytest
import torch

import circuit_atlas
from circuit_atlas.errors import InterventionError
from circuit_atlas.interventions import Supernode, validate_graph
from circuit_atlas.interventions.validate import pearson

from .conftest import build_model, graph_for


def _nodes(graph, count: int = 8):
    """Single feature nodes from every layer but the last, plus same-layer groups (by id)."""
    coords = graph.feature_coords
    early = (coords[:, 0] < graph.n_layers - 1).nonzero().flatten()
    singles = early[torch.linspace(0, len(early) - 1, count).long()].tolist()
    layer1 = (coords[:, 0] == 1).nonzero().flatten()[:4].tolist()
    return singles + [[graph.node_id(n) for n in layer1]]


@pytest.mark.parametrize("case", ["llama-plt-skip", "gemma2-clt-skip"])
def test_constrained_predictions_are_exact(case) -> None:
    model, graph = build_model(case), graph_for(case)
    nodes = _nodes(graph)
    report = validate_graph(model, graph, nodes, mode="constrained", progress=False)
    assert report.feature_correlation >= 0.99 and report.logit_correlation >= 0.99
    assert report.logit_prediction == "direct" and len(report.nodes) == len(nodes)
    for row in report.nodes:
        scale = max(float(row.predicted.abs().max()) if row.predicted.numel() else 0.0, 1e-2)
        assert row.max_abs_error <= 1e-4 * scale
        assert row.actual_logit == pytest.approx(row.predicted_logit_direct, abs=1e-6)
    # the harness's predictions are −(activation-weighted edges): check one against the graph
    first = report.nodes[0]
    column = graph.node_index(first.node_ids[0])
    torch.testing.assert_close(first.predicted, -graph.adjacency[first.target_nodes, column].double())
    assert first.graph_influence == pytest.approx(float(circuit_atlas.graph.node_influence(graph)[column]))
    text = report.table()
    assert "feature-effect correlation: 1" in text and first.label in text
    assert report.to_dict()["nodes"][0]["node_ids"] == first.node_ids


def test_supernode_steering_prediction() -> None:
    case = "llama-plt-skip"
    model, graph = build_model(case), graph_for(case)
    coords = graph.feature_coords
    members = [tuple(coords[c].tolist()) for c in (coords[:, 0] == 0).nonzero().flatten()[:3]]
    report = validate_graph(model, graph, [Supernode(members, scale=3.0, name="boost")], progress=False)
    (row,) = report.nodes
    assert row.label == "boost" and row.operation == "scale"
    columns = [graph.node_index(i) for i in row.node_ids]
    expected = 2.0 * graph.adjacency[row.target_nodes][:, columns].double().sum(1)
    torch.testing.assert_close(row.predicted, expected)
    assert torch.allclose(row.actual, expected, rtol=0, atol=1e-4 * float(expected.abs().max()))


def test_free_mode_reports_total_effect_prediction() -> None:
    case = "llama-clt"
    model, graph = build_model(case), graph_for(case)
    report = validate_graph(model, graph, _nodes(graph, 5), mode="free", progress=False)
    assert report.logit_prediction == "total" and report.mode == "free"
    assert report.feature_correlation is not None and -1.0 <= report.feature_correlation <= 1.0
    # live attention, norms and MLPs make the linear prediction approximate, yet it tracks
    assert report.feature_correlation > 0.5


def test_total_effect_is_the_signed_path_sum() -> None:
    case = "gemma2-plt"
    graph = graph_for(case)
    model = build_model(case)
    report = validate_graph(model, graph, _nodes(graph, 3), progress=False)
    n = graph.n_selected
    A = graph.adjacency[:n, :n].double()
    logit = graph.adjacency[n, :n].double()
    total = logit @ torch.linalg.inv(torch.eye(n, dtype=torch.float64) - A)
    for row in report.nodes:
        columns = [graph.node_index(i) for i in row.node_ids]
        assert row.predicted_logit_total == pytest.approx(-float(total[columns].sum()), rel=1e-5, abs=1e-8)


def test_pearson() -> None:
    x = torch.tensor([1.0, 2.0, 3.0, 5.0])
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    assert pearson(x, torch.ones(4)) is None and pearson(x[:1], x[:1]) is None


def test_bad_validation_inputs() -> None:
    case = "llama-plt-skip"
    model, graph = build_model(case), graph_for(case)
    error_node = graph.node_id(graph.error_range.start + 3)
    with pytest.raises(InterventionError, match="is a error node; only feature nodes"):
        validate_graph(model, graph, [error_node], progress=False)
    with pytest.raises(InterventionError, match="no node with id '9_9_9'"):
        validate_graph(model, graph, ["9_9_9"], progress=False)
    with pytest.raises(InterventionError, match="target 99 is out of range"):
        validate_graph(model, graph, [0], target=99, progress=False)
    coords = graph.feature_coords
    active_here = set(coords[(coords[:, 0] == 0) & (coords[:, 1] == 1), 2].tolist())
    inactive = next(f for f in range(model.transcoders.n_features) if f not in active_here)
    with pytest.raises(InterventionError, match="not a node of the graph"):
        validate_graph(model, graph, [Supernode([(0, 1, inactive)], ablate=True)], progress=False)
    other = build_model(case, tc_seed=6)
    with pytest.raises(InterventionError, match="traced with another model or transcoders"):
        validate_graph(other, graph, [0], progress=False)


def test_supernode_from_graph() -> None:
    graph = graph_for("llama-clt")
    ids = [graph.node_id(3), graph.node_id(10)]
    node = Supernode.from_graph(graph, [ids[0], 10], scale=-2.0, name="pair")
    assert node.members == tuple(tuple(graph.feature_coords[i].tolist()) for i in (3, 10))
    with pytest.raises(InterventionError, match="is a token node"):
        Supernode.from_graph(graph, [graph.token_range.start], ablate=True)
