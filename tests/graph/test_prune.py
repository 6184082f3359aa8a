"""Influence and pruning against a dense float64 re-implementation of the formulas
(docs/algorithm.md §10), written here independently of circuit_atlas.graph.prune."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from circuit_atlas.errors import AttributionError
from circuit_atlas.graph import (
    compute_influence,
    cumulative_scores,
    find_threshold,
    node_influence,
    normalize_matrix,
    prune,
    random_graph,
)
from circuit_atlas.graph.prune import find_matrix_threshold


# ---------------------------------------------------------------- the definition, dense, float64
def ref_normalize(a: np.ndarray) -> np.ndarray:
    a = np.abs(a)
    return a / np.maximum(a.sum(axis=1, keepdims=True), 1e-10)


def ref_influence(a_hat: np.ndarray, w: np.ndarray) -> np.ndarray:
    current = w @ a_hat
    total = current.copy()
    for _ in range(1000):
        if not current.any():
            return total
        current = current @ a_hat
        total += current
    raise AssertionError("no convergence")


def ref_threshold(scores: np.ndarray, tau: float) -> float:
    s = np.sort(scores.ravel())[::-1]
    share = np.cumsum(s) / s.sum()
    hits = np.nonzero(share >= tau)[0]
    return s[hits[0] if len(hits) else len(s) - 1]


def ref_prune(graph, tau_n: float, tau_e: float):
    a = graph.dense_adjacency().double().numpy()
    w = graph.logit_weights.double().numpy()
    n_tok, n_log, n_feat = graph.n_positions, graph.n_logits, graph.n_selected
    keep_always = n_tok + n_log
    influence = ref_influence(ref_normalize(a), w)
    node_mask = influence >= ref_threshold(influence, tau_n)
    node_mask[-keep_always:] = True
    a2 = a.copy()
    a2[~node_mask] = 0
    a2[:, ~node_mask] = 0
    a2_hat = ref_normalize(a2)
    scores = a2_hat * (ref_influence(a2_hat, w) + w)[:, None]
    edge_mask = scores >= ref_threshold(scores, tau_e)
    old = node_mask.copy()
    node_mask[:-keep_always] &= edge_mask[:, :-keep_always].any(0)
    node_mask[:n_feat] &= edge_mask[:n_feat].any(1)
    while not (node_mask == old).all():
        old = node_mask.copy()
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[:-keep_always] &= edge_mask[:, :-keep_always].any(0)
        node_mask[:n_feat] &= edge_mask[:n_feat].any(1)
    order = np.argsort(-influence, kind="stable")
    cumulative = np.empty_like(influence)
    cumulative[order] = np.cumsum(influence[order]) / influence.sum()
    return node_mask, edge_mask, influence, cumulative


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("thresholds", [(0.8, 0.98), (0.5, 0.9), (0.3, 0.6), (0.0, 0.0)])
def test_prune_matches_dense_reference(seed: int, thresholds) -> None:
    graph = random_graph(n_layers=4, n_pos=6, n_sel=50, n_logits=4, seed=seed, density=0.4)
    result = prune(graph, *thresholds)
    node_mask, edge_mask, influence, cumulative = ref_prune(graph, *thresholds)
    assert np.array_equal(result.node_mask.numpy(), node_mask)
    assert np.array_equal(result.edge_mask.numpy(), edge_mask)
    np.testing.assert_allclose(result.node_influence.numpy(), influence, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(result.cumulative_scores.numpy(), cumulative, rtol=1e-5)
    assert result.node_mask[graph.token_range.start :].all(), "tokens and logits are always kept"


def test_influence_equals_inverse_series() -> None:
    graph = random_graph(n_layers=5, n_pos=5, n_sel=60, n_logits=3, seed=11)
    a_hat = ref_normalize(graph.dense_adjacency().double().numpy())
    w = graph.logit_weights.double().numpy()
    n = graph.n_nodes
    # w Â + w Â² + ... = w (I − Â)^{-1} − w
    expected = w @ np.linalg.inv(np.eye(n) - a_hat) - w
    np.testing.assert_allclose(node_influence(graph).numpy(), expected, rtol=1e-4, atol=1e-8)
    dense = compute_influence(normalize_matrix(graph.dense_adjacency()), graph.logit_weights)
    np.testing.assert_allclose(dense.numpy(), expected, rtol=1e-4, atol=1e-8)


def test_influence_on_a_cycle_raises() -> None:
    a = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    with pytest.raises(AttributionError, match="cycle"):
        compute_influence(normalize_matrix(a), torch.tensor([0.0, 0.0, 1.0]))


def _reaches_logits(graph, dense: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Nodes with a path of non-zero edges to a logit of positive weight (breadth-first)."""
    reach = w > 0
    frontier = list(np.nonzero(reach)[0])
    while frontier:
        target = frontier.pop()
        for source in np.nonzero(dense[target])[0]:
            if not reach[source]:
                reach[source] = True
                frontier.append(source)
    return reach


def test_thresholds_one_keep_everything_with_a_path_to_the_logits() -> None:
    base = random_graph(n_layers=4, n_pos=6, n_sel=40, n_logits=3, seed=5, density=0.5)
    adjacency = base.adjacency.clone()
    adjacency[base.n_selected :, : base.n_selected] = 0  # logits read no features directly ...
    top = base.feature_coords[:, 0] == base.n_layers - 1
    adjacency[base.n_selected :, : base.n_selected][:, top] = 1.0  # ... except the last layer's
    adjacency[:, 3] = 0  # feature 3 has no outgoing edge
    adjacency[7] = 0  # feature 7 has no incoming edge
    graph = dataclasses.replace(base, adjacency=adjacency)
    dense = graph.dense_adjacency().numpy()
    reach = _reaches_logits(graph, dense, graph.logit_weights.numpy())
    expected = reach.copy()
    expected[graph.token_range.start :] = True
    has_input = dense.any(axis=1)
    expected[: graph.n_selected] &= has_input[: graph.n_selected]
    assert not expected[3] and not expected[7] and 0 < expected[: graph.n_selected].sum() < graph.n_selected

    result = prune(graph, 1.0, 1.0)
    assert np.array_equal(result.node_mask.numpy(), expected)
    kept = expected
    expected_edges = (dense != 0) & kept[:, None] & kept[None, :]
    assert np.array_equal(result.edge_mask.numpy(), expected_edges)


@pytest.mark.parametrize("seed", range(4))
def test_kept_nodes_have_kept_edges(seed: int) -> None:
    graph = random_graph(n_layers=4, n_pos=7, n_sel=80, n_logits=5, seed=seed, density=0.3)
    result = prune(graph, 0.7, 0.9)
    edges = result.edge_mask
    mask = result.node_mask
    for node in result.kept_nodes.tolist():
        kind = graph.node_kind(node)
        if kind in ("feature", "error"):
            assert edges[:, node].any(), f"{kind} {node} kept without outgoing edge"
        if kind == "feature":
            assert edges[node].any(), f"feature {node} kept without incoming edge"
    # kept edges join kept nodes only
    targets, sources = torch.nonzero(edges, as_tuple=True)
    assert mask[targets].all() and mask[sources].all()
    # pruning keeps fewer nodes than the graph has
    assert int(mask[: graph.n_selected].sum()) < graph.n_selected


def test_kept_edges_are_row_major_with_raw_weights() -> None:
    graph = random_graph(n_layers=3, n_pos=5, n_sel=30, n_logits=3, seed=2)
    result = prune(graph)
    targets, sources, weights = result.kept_edges()
    dense = graph.dense_adjacency()
    assert torch.equal(weights, dense[targets, sources])
    keys = (targets * graph.n_nodes + sources).tolist()
    assert keys == sorted(keys)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "high"])
def test_bad_thresholds_raise(bad) -> None:
    graph = random_graph(2, 4, 8, 2, seed=0)
    with pytest.raises(AttributionError, match="node_threshold"):
        prune(graph, node_threshold=bad)
    with pytest.raises(AttributionError, match="edge_threshold"):
        prune(graph, edge_threshold=bad)


def test_find_threshold_definition_with_ties() -> None:
    scores = torch.tensor([5.0, 3.0, 3.0, 1.0, 1.0, 0.0, 0.0])
    # total 13: share after 5 = .385, after 3,3 = .846, after 1 = .923, after 1 = 1
    assert find_threshold(scores, 0.3) == 5.0
    assert find_threshold(scores, 0.5) == 3.0
    assert find_threshold(scores, 0.9) == 1.0
    assert find_threshold(scores, 1.0) == 1.0  # zeros are never needed
    assert find_threshold(torch.zeros(4), 0.5) == float("inf")
    # a share exactly equal to tau stops there ("first index with share >= tau")
    exact = torch.tensor([[2.0, 1.0], [1.0, 0.0]])
    assert find_threshold(exact, 0.5) == 2.0 and find_matrix_threshold(exact, 0.5) == 2.0
    assert find_threshold(exact, 0.75) == 1.0 and find_matrix_threshold(exact, 0.75) == 1.0


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("tau", [0.0, 0.2, 0.5, 0.9, 0.98, 0.999, 1.0])
@pytest.mark.parametrize("fan_out", [2, 7, 1024])
def test_matrix_threshold_equals_sort_definition(seed: int, tau: float, fan_out: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    scores = torch.rand(40, 70, generator=gen) ** 4 * 10 ** (seed - 2)  # spread over exponents
    scores[scores < 0.3 * scores.max()] *= (seed % 2)  # with and without zeros
    scores[:5] = torch.round(scores[:5] * 4) / 4  # ties
    expected = ref_threshold(scores.double().numpy()[scores.numpy() > 0], tau)
    assert find_matrix_threshold(scores, tau, fan_out=fan_out) == expected
    assert find_threshold(scores, tau) == expected


def test_cumulative_scores_ranks() -> None:
    influence = torch.tensor([1.0, 4.0, 0.0, 3.0])
    assert cumulative_scores(influence).tolist() == pytest.approx([1.0, 0.5, 1.0, 0.875])


def test_graph_without_feature_nodes() -> None:
    graph = random_graph(n_layers=2, n_pos=3, n_sel=0, n_logits=2, seed=0)
    result = prune(graph, 0.8, 0.98)
    node_mask, edge_mask, _, _ = ref_prune(graph, 0.8, 0.98)
    assert np.array_equal(result.node_mask.numpy(), node_mask)
    assert np.array_equal(result.edge_mask.numpy(), edge_mask)
