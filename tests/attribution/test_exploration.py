"""Influence of partial rows: the one-sweep computation equals the matrix power series."""

from __future__ import annotations

import torch

from circuit_atlas.attribution.exploration import partial_influence


def _random_partial_graph(seed: int, n_layers: int = 4, per_layer: int = 6, n_extra: int = 5,
                          n_logits: int = 3):
    """Random signed rows over columns [features | errors/tokens], edges only from lower layers;
    rows exist for the logits and a random subset of the features (as during exploration)."""
    g = torch.Generator().manual_seed(seed)
    n_features = n_layers * per_layer
    n_columns = n_features + n_extra
    layer_of = torch.arange(n_features) // per_layer
    with_rows = torch.randperm(n_features, generator=g)[: n_features * 2 // 3]
    nodes = torch.cat([torch.arange(n_logits) + n_columns, with_rows])
    node_layer = torch.cat([torch.full((n_logits,), n_layers), layer_of[with_rows]])
    rows = torch.randn(len(nodes), n_columns, generator=g, dtype=torch.float64)
    lower = layer_of[None, :] < node_layer[:, None]  # features of strictly lower layers
    rows[:, :n_features] *= lower
    weights = torch.rand(n_logits, generator=g, dtype=torch.float64)
    return rows, nodes, node_layer, weights, n_columns


def _power_series(rows, nodes, weights, n_columns):
    """Brute force: the dense normalised |A| over all nodes, influence = w·(A + A² + ...)."""
    n_nodes = n_columns + len(weights)
    a = torch.zeros(n_nodes, n_nodes, dtype=torch.float64)
    a[nodes, :n_columns] = rows.abs() / rows.abs().sum(1, keepdim=True)
    w = torch.zeros(n_nodes, dtype=torch.float64)
    w[n_columns:] = weights
    total = torch.zeros(n_nodes, dtype=torch.float64)
    step = w
    for _ in range(n_nodes):
        step = step @ a
        total += step
    return total[:n_columns]


def test_one_sweep_equals_the_power_series():
    for seed in range(5):
        rows, nodes, layers, weights, n_columns = _random_partial_graph(seed)
        order = torch.randperm(len(nodes), generator=torch.Generator().manual_seed(seed))
        got = partial_influence(rows[order].clone(), nodes[order], weights, n_columns, layers[order])
        torch.testing.assert_close(got, _power_series(rows, nodes, weights, n_columns))


def test_the_row_buffer_is_left_as_it_was():
    rows, nodes, layers, weights, n_columns = _random_partial_graph(7)
    before = rows.clone()
    partial_influence(rows, nodes, weights, n_columns, layers)
    assert torch.equal(rows, before)
