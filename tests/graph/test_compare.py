"""`compare_graphs`: alignment of positions, targets and nodes; values read back from each graph."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from circuit_atlas.graph import compare_graphs, node_influence, prune, random_graph


def _with_tokens(graph, ids, names=None):
    names = names or [f" w{i}" for i in ids]
    return dataclasses.replace(graph, input_ids=torch.tensor(ids), tokens=names,
                               prompt="".join(names))


def test_a_graph_compared_with_itself_is_all_shared_and_unchanged():
    g = random_graph(n_layers=3, n_pos=6, n_sel=30, n_logits=3, seed=1)
    result = compare_graphs(g, g)
    assert {p.role for p in result.positions[:-1]} == {"same token"} and result.positions[-1].role == "last"
    assert all(n.status == "both" and n.delta == 0 for n in result.nodes)
    assert all(e.status == "both" and e.delta == 0 for e in result.edges)
    assert result.summary["shared influence share a"] == pytest.approx(1.0)
    assert [l.role for l in result.logits] == ["same token"] * 3
    kept = prune(g).node_mask
    assert len([n for n in result.nodes if n.kind == "feature"]) == int(kept[:g.n_selected].sum())


def test_positions_align_by_tokens_and_the_last_positions_always_pair():
    a = _with_tokens(random_graph(n_pos=5, n_sel=12, seed=2), [0, 11, 12, 13, 14])
    b = _with_tokens(random_graph(n_pos=7, n_sel=12, seed=3), [0, 11, 21, 22, 12, 13, 15])
    result = compare_graphs(a, b)
    assert [(p.a, p.b, p.role) for p in result.positions] == [
        (0, 0, "same token"), (1, 1, "same token"), (None, 2, "only b"), (None, 3, "only b"),
        (2, 4, "same token"), (3, 5, "same token"), (4, 6, "last")]
    c = _with_tokens(random_graph(n_pos=5, n_sel=12, seed=4), [0, 11, 99, 13, 14])
    roles = [(p.a, p.b, p.role) for p in compare_graphs(a, c).positions]
    assert (2, 2, "substituted") in roles and roles[-1] == (4, 4, "last")
    # the same last token elsewhere in the other prompt does not steal the last column
    d = _with_tokens(random_graph(n_pos=5, n_sel=12, seed=5), [0, 14, 12, 13, 77])
    roles = [(p.a, p.b, p.role) for p in compare_graphs(a, d).positions]
    assert roles[-1] == (4, 4, "last") and all(r[0] != 4 for r in roles[:-1])
    assert sorted(r[1] for r in roles if r[1] is not None) == [0, 1, 2, 3, 4]


def test_targets_pair_by_label_then_by_rank():
    a = random_graph(n_logits=3, seed=6)
    b = dataclasses.replace(a, logit_tokens=[" x", a.logit_tokens[2], " y"])
    logits = compare_graphs(a, b).logits
    pairs = [(l.a, l.b, l.role) for l in logits]
    assert (2, 1, "same token") in pairs and (0, 0, "rank 0") in pairs and (1, 2, "rank 1") in pairs


def test_values_come_from_each_graphs_own_adjacency():
    """Node influence and edge weights, looked up through the reported node ids, equal the
    graphs' own values; a node kept in one graph only still shows its value in the other."""
    a = random_graph(n_layers=3, n_pos=6, n_sel=40, n_logits=2, seed=7)
    scale = torch.rand(a.adjacency.shape, generator=torch.Generator().manual_seed(8)) * 2
    b = dataclasses.replace(a, adjacency=a.adjacency * scale)
    result = compare_graphs(a, b, node_threshold=0.6)
    infl = {"a": node_influence(a), "b": node_influence(b)}
    dense = {"a": a.dense_adjacency(), "b": b.dense_adjacency()}
    graphs = {"a": a, "b": b}
    ids = {}
    for n in result.nodes:
        for side in "ab":
            node_id = getattr(n, f"node_id_{side}")
            ids[(n.key, side)] = node_id
            value = 0.0 if node_id is None else float(infl[side][graphs[side].node_index(node_id)])
            assert getattr(n, f"influence_{side}") == pytest.approx(value)
    statuses = {n.status for n in result.nodes}
    assert "both" in statuses and statuses - {"both"}
    assert any(n.status != "both" and n.influence_a > 0 and n.influence_b > 0 for n in result.nodes)
    for e in result.edges:
        for side in "ab":
            s, t = ids.get((e.source, side)), ids.get((e.target, side))
            if s is not None and t is not None:
                g = graphs[side]
                expected = float(dense[side][g.node_index(t), g.node_index(s)])
                assert getattr(e, f"weight_{side}") == pytest.approx(expected)
    assert result.edges == sorted(result.edges, key=lambda e: -abs(e.delta))


def test_the_result_is_plain_json_with_documented_fields():
    a, b = random_graph(seed=9), random_graph(seed=10)
    data = json.loads(json.dumps(compare_graphs(a, b).to_json()))
    assert data["format"] == "circuit-atlas-graph-comparison"
    assert set(data) >= {"a", "b", "positions", "logits", "nodes", "edges", "target", "summary"}
    node = data["nodes"][0]
    assert set(node) >= {"key", "kind", "layer", "feature", "position", "status", "node_id_a",
                         "node_id_b", "influence_a", "influence_b", "delta", "activation_a",
                         "activation_b", "label"}
    assert {p["key"] for p in data["positions"]} >= {n["position"] for n in data["nodes"]
                                                     if n["kind"] != "logit"}
