"""The attention panel's endpoints: head tables and QK explanations of a graph's edges, read from
the files stored beside the graph, from a graph JSON's `attention` object, or computed with the
server's model; refusals that say how to precompute, and bad requests and files answered with
4xx messages naming the field or file.

The numbers are checked against the graph's own edge weights (the head rows must add up to the
edge) and against direct library calls (`edge_heads`, `qk_attribution`), whose exactness against
the real model is proven in tests/attribution."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import circuit_atlas
from circuit_atlas.attribution import explain_graph_attention
from circuit_atlas.graph import to_graph_json, write_graph_bundle
from circuit_atlas.server.app import create_app

from .conftest import STEER_PROMPT, steering_model


@pytest.fixture(scope="module")
def model():
    return steering_model()


@pytest.fixture(scope="module")
def graph(model):
    return circuit_atlas.attribute(model, STEER_PROMPT, progress=False)


@pytest.fixture(scope="module")
def attention(model, graph):
    return explain_graph_attention(model, graph, max_edges=3, progress=False)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, graph, attention) -> Path:
    root = tmp_path_factory.mktemp("attention")
    write_graph_bundle(graph, root, "stored", attention=attention)
    write_graph_bundle(graph, root, "plain")
    write_graph_bundle(dataclasses.replace(graph, model_name="other-model"), root, "other-model")
    (root / "withatt.json").write_text(json.dumps(
        to_graph_json(graph, "withatt", 0.8, 0.98, attention=attention)))
    (root / "noatt.json").write_text(json.dumps(to_graph_json(graph, "noatt", 0.8, 0.98)))
    return root


@pytest.fixture(scope="module")
def no_model(data_dir) -> TestClient:
    return TestClient(create_app(data_dir))


@pytest.fixture(scope="module")
def with_model(data_dir, model) -> TestClient:
    return TestClient(create_app(data_dir, model=model))


def edge_weight(graph, source: str, target: str) -> float:
    return float(graph.adjacency[graph.storage_row(graph.node_index(target)), graph.node_index(source)])


def url(graph_id: str, source: str, target: str, head: tuple[int, int] | None = None) -> str:
    tail = "" if head is None else f"/{head[0]}/{head[1]}"
    return f"/api/graphs/{graph_id}/attention/{source}/{target}{tail}"


def test_status_lists_stored_edges_or_says_how_to_precompute(no_model, with_model, attention):
    stored = no_model.get("/api/graphs/stored/attention").json()
    assert stored["stored"] and not stored["computable"] and stored["reason"] is None
    assert [(e["source"], e["target"]) for e in stored["edges"]] == \
        [(e["source"], e["target"]) for e in attention.edges]
    plain = no_model.get("/api/graphs/plain/attention").json()
    assert not plain["stored"] and not plain["computable"]
    assert "circuit-atlas attention" in plain["reason"] and "--precompute" in plain["reason"]
    assert with_model.get("/api/graphs/plain/attention").json()["computable"]
    assert not with_model.get("/api/graphs/other-model/attention").json()["computable"]


@pytest.mark.parametrize("graph_id", ["stored", "withatt"])
def test_stored_heads_add_up_to_the_graph_edge(no_model, graph, attention, graph_id):
    stored = attention.edges[0]
    source, target = stored["source"], stored["target"]
    body = no_model.get(url(graph_id, source, target)).json()
    assert body["origin"] == "stored" and not body["same_position"] and body["note"] is None
    weight = edge_weight(graph, source, target)
    assert body["edge"] == pytest.approx(weight, rel=1e-5)
    assert [(h["layer"], h["head"]) for h in body["heads"]] == \
        [(h["layer"], h["head"]) for h in stored["heads"]]
    for head in body["heads"]:
        assert head["share"] == pytest.approx(head["weight"] / weight, rel=1e-5)
        assert head["explained"]
    # the stored rows are the strongest heads; every head's row comes with the model
    assert abs(sum(h["weight"] for h in body["heads"])) <= abs(weight) * 1.5


def test_computed_heads_equal_edge_heads_and_sum_to_the_edge(with_model, model, graph):
    source, target = "E_25_2", "1_2_5"
    body = with_model.get(url("plain", source, target)).json()
    assert body["origin"] == "computed"
    direct = circuit_atlas.edge_heads(model, graph, source, target)
    assert [(h["layer"], h["head"]) for h in body["heads"]] == [(r.layer, r.head) for r in direct]
    total = sum(h["weight"] for h in body["heads"]) + body["residual"]
    assert total == pytest.approx(edge_weight(graph, source, target), rel=1e-4)


def test_same_position_edges_say_why_no_head_moves_them(with_model, graph):
    target = next(graph.node_id(i) for i in range(graph.n_selected)
                  if int(graph.feature_coords[i, 0]) == 1 and int(graph.feature_coords[i, 1]) == 5)
    source = "E_" + str(int(graph.input_ids[5])) + "_5"
    body = with_model.get(url("plain", source, target)).json()
    assert body["same_position"] and "same position" in body["note"]
    total = sum(h["weight"] for h in body["heads"]) + body["residual"]
    assert total == pytest.approx(edge_weight(graph, source, target), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("graph_id", ["stored", "withatt"])
def test_stored_explanation_is_the_heads_qk_attribution(no_model, model, graph, attention, graph_id,
                                                        data_dir):
    nodes = (set(graph.node_ids()) if graph_id == "stored" else  # the JSON file: pruned
             {n["node_id"] for n in json.loads((data_dir / "withatt.json").read_text())["nodes"]})
    edge = attention.edges[0]
    row = next(r for r in edge["heads"] if r["layer"] == 1)
    body = no_model.get(url(graph_id, edge["source"], edge["target"], (row["layer"], row["head"])),
                        params={"top": 5}).json()
    qk = circuit_atlas.qk_attribution(model, graph.input_ids, layer=row["layer"], head=row["head"],
                                      query_position=row["query_position"],
                                      key_position=row["key_position"])
    assert body["origin"] == "stored"
    assert body["score"] == pytest.approx(qk.score, rel=1e-5)
    assert body["attention_weight"] == pytest.approx(qk.attention_weight, rel=1e-5)
    expected = [(p.query_term, p.key_term, p.value) for p in qk.top_pairs(5) if p.value or p.weight_effect]
    got = [(p["query"]["id"], p["key"]["id"], p["value"]) for p in body["pairs"]]
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    assert [g[2] for g in got] == pytest.approx([e[2] for e in expected], rel=1e-4, abs=1e-6)
    for pair in body["pairs"]:
        for side in ("query", "key"):
            term = pair[side]
            assert term["label"], term
            if term["kind"] in ("token", "feature", "error"):
                assert term["node"]
                assert term["in_graph"] == (term["id"] in nodes)


def test_computed_explanation_for_a_head_without_one(with_model, model, graph, attention):
    edge = attention.edges[0]
    stored_heads = {(r["layer"], r["head"]) for r in edge["heads"]}
    layer, head = next((1, h) for h in range(4) if (1, h) not in stored_heads)
    body = with_model.get(url("stored", edge["source"], edge["target"], (layer, head))).json()
    assert body["origin"] == "computed"
    qk = circuit_atlas.qk_attribution(model, graph.input_ids, layer=layer, head=head,
                                      query_position=body["query_position"],
                                      key_position=body["key_position"])
    assert body["score"] == pytest.approx(qk.score, rel=1e-5)


def test_labels_come_from_the_annotations(no_model, attention):
    edge = attention.edges[0]
    row = next(r for r in edge["heads"] if r["layer"] == 1)
    path = url("stored", edge["source"], edge["target"], (row["layer"], row["head"]))
    first = no_model.get(path).json()["pairs"][0]["key"]
    assert first["in_graph"]
    no_model.put("/api/graphs/stored/annotations",
                 json={"node_labels": {first["id"]: "my key term"}}).raise_for_status()
    try:
        again = no_model.get(path).json()["pairs"][0]["key"]
        assert again["label"] == "my key term"
    finally:
        no_model.put("/api/graphs/stored/annotations", json={"node_labels": {first["id"]: None}})


def test_refusals_say_how_to_precompute(no_model, with_model, attention):
    edge = attention.edges[0]
    for client, graph_id in ((no_model, "plain"), (no_model, "noatt"), (with_model, "noatt"),
                             (with_model, "other-model")):
        response = client.get(url(graph_id, edge["source"], edge["target"]))
        assert response.status_code == 409, (graph_id, response.text)
        assert "circuit-atlas attention GRAPH_DIR --precompute" in response.json()["detail"]
    stored = {(r["layer"], r["head"]) for r in edge["heads"]}
    layer, head = next((1, h) for h in range(4) if (1, h) not in stored)
    response = no_model.get(url("stored", edge["source"], edge["target"], (layer, head)))
    assert response.status_code == 409 and "stored heads:" in response.json()["detail"]


def test_bad_requests_name_the_field(no_model, with_model, attention):
    edge = attention.edges[0]
    s, t = edge["source"], edge["target"]
    cases = [
        (no_model, url("stored", s, "1_999_5"), 404, "target node '1_999_5'"),
        (no_model, url("stored", "nope", t), 404, "source node 'nope'"),
        (no_model, url("missing", s, t), 404, "no graph with id"),
        (no_model, url("stored", s, t, (7, 0)), 400, "layer 7 is out of range 0..1"),
        (with_model, url("plain", s, t, (1, 9)), 400, "head 9 is out of range"),
        (no_model, url("stored", s, t) + "/x/0", 400, "layer"),
        (no_model, url("stored", s, t, (1, 0)) + "?top=0", 400, "top"),
        (with_model, url("plain", t, s), 400, f"target '{s}' is a token node"),
    ]
    for client, path, status, words in cases:
        response = client.get(path)
        assert response.status_code == status, (path, response.text)
        assert words in response.json()["detail"], (path, response.json())


def test_unreadable_or_escaping_files_are_never_served(tmp_path, graph, attention):
    root = tmp_path / "data"
    write_graph_bundle(graph, root, "broken", attention=attention)
    (root / "broken" / "attention.json").write_text('{"format": "circuit-atlas-attention", '
                                                    '"version": 1, "edges": 3}')
    outside = tmp_path / "outside"
    attention.save(outside)
    write_graph_bundle(graph, root, "linked")
    for name in ("attention.json", "attention.safetensors"):
        os.symlink(outside / name, root / "linked" / name)
    doc = to_graph_json(graph, "badjson", 0.8, 0.98, attention=attention)
    doc["attention"]["edges"][0]["heads"][0]["weight"] = "heavy"
    (root / "badjson.json").write_text(json.dumps(doc))
    client = TestClient(create_app(root))
    edge = attention.edges[0]
    response = client.get(url("broken", edge["source"], edge["target"]))
    assert response.status_code == 422 and "attention.json" in response.json()["detail"]
    assert str(tmp_path) not in response.json()["detail"]
    response = client.get(url("badjson", edge["source"], edge["target"]))
    assert response.status_code == 422 and "weight" in response.json()["detail"]
    assert not client.get("/api/graphs/linked/attention").json()["stored"]
