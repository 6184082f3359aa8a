"""Replacement / completeness of the whole graph and of pinned subgraphs."""

from __future__ import annotations

import pytest

from circuit_atlas.graph import graph_scores


def test_whole_graph_scores(client, graph) -> None:
    data = client.post("/api/graphs/demo/scores").json()
    expected = graph_scores(graph)
    assert data["replacement"] == pytest.approx(expected.replacement, abs=1e-12)
    assert data["completeness"] == pytest.approx(expected.completeness, abs=1e-12)


def test_pinned_subgraph_scores(client, graph) -> None:
    ids = graph.node_ids()
    pinned = [ids[1], ids[5], ids[graph.error_range.start + 3], ids[graph.logit_range.start]]
    data = client.post("/api/graphs/demo/scores", json={"node_ids": pinned}).json()
    expected = graph_scores(graph, subgraph=pinned)
    assert data["replacement"] == pytest.approx(expected.replacement, abs=1e-12)
    assert data["completeness"] == pytest.approx(expected.completeness, abs=1e-12)
    assert data["n_nodes"] == len(pinned)
    # Pinning every feature leaves nothing to merge into the errors: whole-graph scores.
    everything = client.post(
        "/api/graphs/demo/scores", json={"node_ids": ids[: graph.n_selected]}
    ).json()
    whole = client.post("/api/graphs/demo/scores", json={}).json()
    assert everything["replacement"] == pytest.approx(whole["replacement"], abs=1e-9)
    assert everything["completeness"] == pytest.approx(whole["completeness"], abs=1e-9)
    # Fewer pinned features explain less.
    assert data["replacement"] <= whole["replacement"] + 1e-9


def test_score_errors(client) -> None:
    bad = client.post("/api/graphs/demo/scores", json={"node_ids": ["nope_1_2"]})
    assert bad.status_code == 400 and "nope_1_2" in bad.json()["detail"]
    assert client.post("/api/graphs/demo/scores", json={"node_ids": "0_1_2"}).status_code == 400
    assert client.post("/api/graphs/demo/scores", json=[1, 2]).status_code == 400
    json_only = client.post("/api/graphs/jsonly/scores", json={"node_ids": []})
    assert json_only.status_code == 409 and "native graph" in json_only.json()["detail"]
