"""Replacement / completeness scores against dense float64 formulas written here (docs/algorithm.md §11)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from circuit_atlas.errors import AttributionError
from circuit_atlas.graph import graph_scores, prune, random_graph


def ref_normalize(a: np.ndarray) -> np.ndarray:
    a = np.abs(a)
    return a / np.maximum(a.sum(axis=1, keepdims=True), 1e-10)


def ref_scores(graph, unchosen_features: np.ndarray | None = None) -> tuple[float, float]:
    """§11 on the dense matrix; unchosen features lose their rows and count as errors."""
    a = graph.dense_adjacency().double().numpy()
    w = graph.logit_weights.double().numpy()
    errors = np.zeros(graph.n_nodes, dtype=bool)
    errors[graph.error_range.start : graph.error_range.stop] = True
    if unchosen_features is not None:
        a[unchosen_features] = 0
        errors[unchosen_features] = True
    a_hat = ref_normalize(a)
    n = graph.n_nodes
    influence = w @ np.linalg.inv(np.eye(n) - a_hat) - w
    tokens = np.zeros(n, dtype=bool)
    tokens[graph.token_range.start : graph.token_range.stop] = True
    replacement = influence[tokens].sum() / (influence[tokens].sum() + influence[errors].sum())
    nonerr = 1 - a_hat[:, errors].sum(axis=1)
    completeness = (nonerr * (influence + w)).sum() / (influence + w).sum()
    return replacement, completeness


@pytest.mark.parametrize("seed", range(4))
def test_whole_graph_scores_match_formulas(seed: int) -> None:
    graph = random_graph(n_layers=4, n_pos=6, n_sel=50, n_logits=4, seed=seed, density=0.5)
    scores = graph_scores(graph)
    replacement, completeness = ref_scores(graph)
    assert scores.replacement == pytest.approx(replacement, rel=1e-5)
    assert scores.completeness == pytest.approx(completeness, rel=1e-5)
    assert 0 < scores.replacement < 1 and 0 < scores.completeness < 1


def test_scores_are_one_without_errors() -> None:
    graph = random_graph(n_layers=3, n_pos=5, n_sel=30, n_logits=3, seed=1)
    adjacency = graph.adjacency.clone()
    adjacency[:, graph.error_range.start : graph.error_range.stop] = 0
    clean = dataclasses.replace(graph, adjacency=adjacency)
    scores = graph_scores(clean)
    assert scores.replacement == pytest.approx(1.0, abs=1e-12)
    assert scores.completeness == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_subgraph_scores_merge_unchosen_features_into_errors(seed: int) -> None:
    graph = random_graph(n_layers=4, n_pos=6, n_sel=40, n_logits=3, seed=seed, density=0.5)
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(graph.n_selected, generator=gen)[:15].tolist()
    unchosen = np.array(sorted(set(range(graph.n_selected)) - set(chosen)))
    scores = graph_scores(graph, subgraph=chosen)
    replacement, completeness = ref_scores(graph, unchosen)
    assert scores.replacement == pytest.approx(replacement, rel=1e-5)
    assert scores.completeness == pytest.approx(completeness, rel=1e-5)
    # the same subgraph named by node ids, plus non-feature nodes (always included)
    ids = [graph.node_id(i) for i in chosen] + [graph.node_id(graph.token_index(0))]
    assert graph_scores(graph, subgraph=ids) == scores
    mask = torch.zeros(graph.n_nodes, dtype=torch.bool)
    mask[chosen] = True
    assert graph_scores(graph, subgraph=mask) == scores
    # fewer features explain less than the whole graph
    assert scores.replacement < graph_scores(graph).replacement


def test_subgraph_of_all_features_equals_whole_graph() -> None:
    graph = random_graph(n_layers=3, n_pos=5, n_sel=25, n_logits=2, seed=4)
    whole = graph_scores(graph)
    sub = graph_scores(graph, subgraph=range(graph.n_selected))
    assert sub.replacement == pytest.approx(whole.replacement, rel=1e-12)
    assert sub.completeness == pytest.approx(whole.completeness, rel=1e-12)


def test_subgraph_from_pruned_graph() -> None:
    graph = random_graph(n_layers=3, n_pos=5, n_sel=40, n_logits=3, seed=6)
    pruned = prune(graph, 0.6, 0.9)
    unchosen = np.nonzero(~pruned.node_mask[: graph.n_selected].numpy())[0]
    scores = graph_scores(graph, subgraph=pruned)
    replacement, completeness = ref_scores(graph, unchosen)
    assert scores.replacement == pytest.approx(replacement, rel=1e-5)
    assert scores.completeness == pytest.approx(completeness, rel=1e-5)
    for value in (scores.replacement, scores.completeness):
        assert 0.0 <= value <= 1.0


def test_bad_subgraphs_raise() -> None:
    graph = random_graph(n_layers=2, n_pos=4, n_sel=10, n_logits=2, seed=0)
    with pytest.raises(AttributionError, match="unknown node id"):
        graph_scores(graph, subgraph=["9_9_9_9"])
    with pytest.raises(AttributionError, match="outside"):
        graph_scores(graph, subgraph=[graph.n_nodes])
    with pytest.raises(AttributionError, match="shape"):
        graph_scores(graph, subgraph=torch.zeros(3, dtype=torch.bool))
    other = random_graph(n_layers=2, n_pos=4, n_sel=10, n_logits=2, seed=1)
    with pytest.raises(AttributionError, match="another graph"):
        graph_scores(graph, subgraph=prune(other))
