"""`aggregate_graphs`: recurring features and edges, and the typical circuit's mean adjacency,
checked against direct look-ups in the graphs."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.graph import Graph, aggregate_graphs, graph_scores, node_influence, prune, random_graph


def _scaled(graph: Graph, seed: int) -> Graph:
    """The same nodes with other edge weights (so nodes align but values differ)."""
    scale = torch.rand(graph.adjacency.shape, generator=torch.Generator().manual_seed(seed)) * 2
    return dataclasses.replace(graph, adjacency=graph.adjacency * scale)


def test_copies_of_one_graph_give_its_kept_features_and_its_own_edges():
    g = random_graph(n_layers=3, n_pos=6, n_sel=30, n_logits=2, seed=1)
    result = aggregate_graphs([g, g, g])
    kept = prune(g).node_mask[:g.n_selected]
    coords = g.feature_coords[kept].tolist()
    assert {(f.layer, f.offset + g.n_positions, f.feature) for f in result.features} == {tuple(c) for c in coords}
    influence = node_influence(g)
    for f in result.features:
        index = g.feature_coords.tolist().index([f.layer, f.offset + g.n_positions, f.feature])
        assert f.frequency == 1.0 and f.mean_influence == pytest.approx(float(influence[index]))
    typical = result.graph
    rows = torch.nonzero(kept).flatten()
    columns = torch.cat([rows, torch.arange(g.n_selected, g.n_sources)])
    expected = g.adjacency[torch.cat([rows, torch.tensor([g.n_selected])])][:, columns]
    torch.testing.assert_close(typical.adjacency, expected)
    assert typical.logit_probabilities.item() == pytest.approx(float(g.logit_probabilities[0]))


def test_the_typical_adjacency_is_the_mean_of_the_aligned_entries():
    a = random_graph(n_layers=2, n_pos=5, n_sel=24, n_logits=2, seed=3)
    b = _scaled(a, 4)
    result = aggregate_graphs([a, b], min_frequency=0.5)
    typical = result.graph
    dense = {"a": a.dense_adjacency(), "b": b.dense_adjacency()}
    ids_t = typical.node_ids()
    for t in range(typical.n_selected):
        for s in range(typical.n_sources):
            ta, sa = a.node_index(ids_t[t]), None
            try:
                sa = a.node_index(ids_t[s])
            except KeyError:
                pass
            if sa is None:  # a feature kept by neither copy's pruning is not a column of the mean
                continue
            mean = (dense["a"][ta, sa] + dense["b"][ta, sa]) / 2
            assert float(typical.adjacency[t, s]) == pytest.approx(float(mean), abs=1e-6)
    answer = (a.adjacency[a.n_selected] + b.adjacency[b.n_selected]) / 2
    feature_cols = [a.node_index(i) for i in ids_t[:typical.n_selected]]
    torch.testing.assert_close(typical.adjacency[-1, :typical.n_selected], answer[feature_cols])
    assert 0 <= graph_scores(typical).replacement <= 1  # a valid graph the usual tools read


def test_positions_align_from_the_end_and_tokens_that_vary_are_marked():
    a = random_graph(n_layers=2, n_pos=5, n_sel=20, seed=5)
    b = random_graph(n_layers=2, n_pos=7, n_sel=20, seed=6)
    result = aggregate_graphs([a, b], min_frequency=0.5)
    assert len(result.tokens) == 5 and "|" in result.tokens[-1]
    assert all(-5 <= f.offset <= -1 for f in result.features)
    for f in result.features:  # a feature kept in one of two graphs has frequency 1/2
        where = [g for g in (a, b) if [f.layer, f.offset + g.n_positions, f.feature] in
                 g.feature_coords[prune(g).node_mask[:g.n_selected]].tolist()]
        assert f.frequency == len(where) / 2
    assert result.graph.n_positions == 5


def test_edges_are_counted_over_the_graphs_that_keep_them():
    a = random_graph(n_layers=3, n_pos=5, n_sel=30, seed=7)
    graphs = [a, _scaled(a, 8), _scaled(a, 9), _scaled(a, 10)]
    result = aggregate_graphs(graphs, min_frequency=0.25)
    assert result.edges
    for e in result.edges[:20]:
        count = 0
        for g in graphs:
            pruned = prune(g)
            kept = dict.fromkeys(zip(*[x.tolist() for x in pruned.kept_edges()[:2]]))
            src, dst = _dense(g, e.source), _dense(g, e.target)
            count += (dst, src) in kept and bool(pruned.node_mask[src] and pruned.node_mask[dst])
        assert e.frequency == count / len(graphs)


def _dense(g: Graph, key: str) -> int:
    """The dense index of an aggregate key in one graph (written from the documented key forms)."""
    if key == "answer":
        return g.logit_index(0)
    parts = key.split()
    if parts[0] == "token":
        return g.token_index(int(parts[1][1:]) + g.n_positions)
    if parts[0] == "error":
        return g.error_index(int(parts[1][1:]), int(parts[2][1:]) + g.n_positions)
    layer, feature, offset = parts
    coords = [int(layer[1:]), int(offset[1:]) + g.n_positions, int(feature[1:])]
    return g.feature_coords.tolist().index(coords)


def test_bad_inputs_and_json():
    with pytest.raises(CircuitAtlasError, match="at least one graph"):
        aggregate_graphs([])
    a = random_graph(seed=11)
    other = dataclasses.replace(a, model_name="other-model")
    with pytest.raises(CircuitAtlasError, match="one model"):
        aggregate_graphs([a, other])
    with pytest.raises(CircuitAtlasError, match="min_frequency"):
        aggregate_graphs([a], min_frequency=0)
    data = json.loads(json.dumps(aggregate_graphs([a, a]).to_json()))
    assert data["n_graphs"] == 2 and "graph" not in data and data["features"][0]["key"].startswith("L")
