"""The analysis endpoints: two graphs compared (the diff view) and a graph's supernode
suggestions (the suggestions panel), on demo-model graphs whose circuit is known, plus the
graph list of batch-traced and aggregated bundles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from circuit_atlas.demo.bundle import demo_features_path
from circuit_atlas.features import FeatureStore
from circuit_atlas.features.supernodes import suggest_supernodes
from circuit_atlas.graph import compare_graphs, to_graph_json
from circuit_atlas.server.app import create_app

from ..city_graphs import write_city_bundles

TEXAS = (0, 479)  # the demo's texas region feature (tests/demo/test_compare_aggregate.py)


@pytest.fixture(scope="module")
def site(tmp_path_factory, demo_model) -> dict:
    root = tmp_path_factory.mktemp("compare")
    graphs = write_city_bundles(demo_model, root, aggregate="typical-city")
    doc = to_graph_json(graphs["dallas"], "jsonly", 0.8, 0.98)
    (root / "jsonly.json").write_text(json.dumps(doc))
    store = FeatureStore(demo_features_path("clt"))
    client = TestClient(create_app(root, features=store))
    return {"root": root, "graphs": graphs, "store": store, "client": client}


def test_comparison_is_compare_graphs_of_the_two_bundles(site) -> None:
    answer = site["client"].get("/api/compare/dallas/oakland")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    labels = site["store"].labels()
    expected = compare_graphs(site["graphs"]["dallas"], site["graphs"]["oakland"], labels=labels).to_json()
    assert body["graph_a"] == "dallas" and body["graph_b"] == "oakland"
    assert [n["key"] for n in body["nodes"]] == [n["key"] for n in expected["nodes"]]
    assert [n["status"] for n in body["nodes"]] == [n["status"] for n in expected["nodes"]]
    assert body["target"]["token_a"] == "austin" and body["target"]["token_b"] == "sacramento"
    gone = next(n for n in body["nodes"] if n["status"] == "only a" and n["kind"] == "feature")
    assert (gone["layer"], gone["feature"]) == TEXAS and gone["position"] == "8:8"
    assert gone["label"] == labels[TEXAS]  # named as the graph view names it
    assert gone["node_id_a"] and gone["node_id_b"] is None
    # each side's node id opens that graph's node
    node = site["client"].get(f"/api/graphs/dallas/nodes/{gone['node_id_a']}", params={"scope": "full"})
    assert node.status_code == 200 and node.json()["node"]["layer"] == "0"


def test_comparison_thresholds_change_what_is_listed(site) -> None:
    wide = site["client"].get("/api/compare/dallas/oakland", params={"node_threshold": 0.95}).json()
    narrow = site["client"].get("/api/compare/dallas/oakland", params={"node_threshold": 0.5}).json()
    assert wide["settings"]["node_threshold"] == 0.95
    assert len(narrow["nodes"]) < len(wide["nodes"])


def test_comparison_errors_name_the_field(site) -> None:
    client = site["client"]
    missing_b = client.get("/api/compare/dallas/nowhere")
    assert missing_b.status_code == 404 and missing_b.json()["detail"].startswith("other_graph_id")
    missing_a = client.get("/api/compare/nowhere/dallas")
    assert missing_a.status_code == 404 and missing_a.json()["detail"].startswith("graph_id")
    bad = client.get("/api/compare/dallas/oakland", params={"node_threshold": 2})
    assert bad.status_code == 400 and "node_threshold" in bad.json()["detail"]
    json_only = client.get("/api/compare/dallas/jsonly")
    assert json_only.status_code == 409 and "other_graph_id" in json_only.json()["detail"]


def test_suggestions_are_suggest_supernodes_with_the_served_store(site) -> None:
    answer = site["client"].get("/api/graphs/dallas/supernode-suggestions", params={"node_threshold": 0.95})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected = suggest_supernodes(site["graphs"]["dallas"], site["store"], node_threshold=0.95)
    assert body["feature_store"] and "coactivation" in body["evidence_used"]
    assert [(g["name"], g["members"]) for g in body["groups"]] == \
        [(g.name, g.members) for g in expected.groups]
    assert body["groups"], "the dallas graph has groups to suggest"
    view = site["client"].get("/api/graphs/dallas", params={"node_threshold": 0.95}).json()
    shown = {n["node_id"] for n in view["nodes"]}
    assert all(m in shown for g in body["groups"] for m in g["members"])  # drawn, so clickable


def test_suggestions_refuse_bad_requests(site) -> None:
    client = site["client"]
    assert client.get("/api/graphs/nowhere/supernode-suggestions").status_code == 404
    bad = client.get("/api/graphs/dallas/supernode-suggestions", params={"min_similarity": 5})
    assert bad.status_code == 400 and "min_similarity" in bad.json()["detail"]
    json_only = client.get("/api/graphs/jsonly/supernode-suggestions")
    assert json_only.status_code == 409 and "graph-JSON" in json_only.json()["detail"]


def test_batch_and_aggregate_bundles_are_listed_and_open(site, tmp_path: Path) -> None:
    """Bundles of `trace --prompts --out DIR/<group>` runs served from DIR, and the typical
    circuit of `aggregate --out`, are listed, open and compare."""
    for group in ("cities", "more"):
        shutil.copytree(site["root"], tmp_path / group, ignore=shutil.ignore_patterns("jsonly.json"))
    client = TestClient(create_app(tmp_path))
    listing = {g["id"]: g for g in client.get("/api/graphs").json()["graphs"]}
    assert {"dallas", "oakland", "houston", "typical-city", "more.dallas", "more.typical-city"} <= set(listing)
    assert listing["more.dallas"]["folder"] == "more/dallas" and listing["dallas"]["prompt"].endswith("dallas is")
    typical = client.get("/api/graphs/more.typical-city")
    assert typical.status_code == 200
    assert any(n["feature_type"] == "logit" and "answer" in (n.get("clerp") or "") for n in typical.json()["nodes"])
    assert client.get("/api/compare/typical-city/more.dallas").status_code == 200
