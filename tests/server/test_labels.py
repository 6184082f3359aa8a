"""Feature labels reach every node the API sends: from the graph file, its saved clerps, the
bundle's feature-labels.json and the served feature store (same transcoders only); the user's
annotations win; special tokens never appear among a feature's promoted / suppressed tokens."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from circuit_atlas.demo.bundle import demo_features_path
from circuit_atlas.features.store import FeatureStore
from circuit_atlas.graph import to_graph_json, write_graph_bundle
from circuit_atlas.io.cantor import cantor_pair
from circuit_atlas.server.app import create_app
from circuit_atlas.server.features import is_special_token, without_special_tokens
from circuit_atlas.server.labels import LabelBook, feature_key


def _features(graph) -> list[tuple[int, int, int]]:
    """(layer, position, feature) of the graph's selected feature nodes."""
    return [tuple(int(v) for v in row) for row in graph.feature_coords.tolist()]


def test_bundle_labels_reach_views_neighbourhoods_and_subgraphs(tmp_path: Path, graph) -> None:
    coords = _features(graph)
    labels = {(layer, feat): f"label {layer}/{feat}" for layer, _pos, feat in coords[::2]}
    write_graph_bundle(graph, tmp_path, "g", node_threshold=1.0, edge_threshold=1.0, labels=labels)
    client = TestClient(create_app(tmp_path))
    view = client.get("/api/graphs/g").json()
    shown = [n for n in view["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert shown
    for node in shown:
        layer, feat, _pos = (int(x) for x in node["node_id"].split("_"))
        assert node["clerp"] == labels.get((layer, feat), "")
    # The native graph's own neighbourhoods and subgraphs carry them too.
    labelled = next(n["node_id"] for n in shown if n["clerp"])
    layer, feat, _ = (int(x) for x in labelled.split("_"))
    downstream = next(
        link["target"] for link in view["links"] if link["source"] == labelled
    )
    full = client.get(f"/api/graphs/g/nodes/{downstream}", params={"scope": "full"}).json()
    row = next(r for r in full["incoming"] if r["node_id"] == labelled)
    assert row["label"] == labels[(layer, feat)]
    sub = client.post("/api/graphs/g/subgraph", json={"node_ids": [labelled, downstream]}).json()
    assert {n["node_id"]: n["label"] for n in sub["nodes"]}[labelled] == labels[(layer, feat)]
    # The user's label wins wherever a label is computed.
    client.put("/api/graphs/g/annotations", json={"node_labels": {labelled: "mine"}})
    full = client.get(f"/api/graphs/g/nodes/{downstream}", params={"scope": "full"}).json()
    assert next(r for r in full["incoming"] if r["node_id"] == labelled)["label"] == "mine"
    node = client.get(f"/api/graphs/g/nodes/{labelled}", params={"scope": "full"}).json()["node"]
    assert node["label"] == "mine" and node["clerp"] == labels[(layer, feat)]


def test_saved_clerps_label_a_json_graph(tmp_path: Path, graph) -> None:
    doc = to_graph_json(graph, "loose", 1.0, 1.0)
    first = next(n for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder")
    doc["qParams"]["clerps"] = json.dumps([[first["feature"], "saved in the file"]])
    (tmp_path / "loose.json").write_text(json.dumps(doc))
    client = TestClient(create_app(tmp_path))
    view = client.get("/api/graphs/loose").json()
    assert {n["node_id"]: n["clerp"] for n in view["nodes"]}[first["node_id"]] == "saved in the file"
    node = client.get(f"/api/graphs/loose/nodes/{first['node_id']}", params={"scope": "full"}).json()
    assert node["node"]["label"] == "saved in the file"


def _store_graph(store: FeatureStore, scan: str) -> tuple[dict, dict[tuple[int, int], str]]:
    """A graph-JSON document whose features are labelled in `store` (and one that is not)."""
    labelled = sorted(store.labels().items())[:3]
    nodes = []
    for i, ((layer, feat), _text) in enumerate(labelled):
        nodes.append({"node_id": f"{layer}_{feat}_1", "feature": cantor_pair(layer, feat),
                      "layer": str(layer), "ctx_idx": 1, "feature_type": "cross layer transcoder",
                      "clerp": "", "influence": 0.1 * (i + 1), "activation": 1.0})
    nodes.append({"node_id": "E_5_0", "feature": 0, "layer": "E", "ctx_idx": 0,
                  "feature_type": "embedding", "clerp": "", "influence": None})
    links = [{"source": "E_5_0", "target": n["node_id"], "weight": 1.0} for n in nodes[:-1]]
    doc = {"metadata": {"slug": "s", "scan": scan, "prompt_tokens": ["<bos>", " x"],
                        "prompt": "<bos> x", "schema_version": 1},
           "qParams": {}, "nodes": nodes, "links": links}
    return doc, dict(labelled)


@pytest.mark.parametrize("matching", [True, False])
def test_store_labels_apply_only_to_graphs_of_its_transcoders(tmp_path: Path, matching) -> None:
    store_dir = tmp_path / "features"
    shutil.copytree(demo_features_path("clt"), store_dir)
    store = FeatureStore(store_dir)
    scan = store.meta["transcoders_scan"] if matching else "some-other/transcoders"
    doc, labels = _store_graph(store, scan)
    data = tmp_path / "data"
    data.mkdir()
    (data / "s.json").write_text(json.dumps(doc))
    client = TestClient(create_app(data, features=store))
    clerps = {n["node_id"]: n["clerp"] for n in client.get("/api/graphs/s").json()["nodes"]}
    for (layer, feat), text in labels.items():
        assert clerps[f"{layer}_{feat}_1"] == (text if matching else "")
    if matching:
        # A label changed in the store shows at the next request (the views are re-made).
        (layer, feat), _ = next(iter(labels.items()))
        store.set_label(layer, feat, "relabelled")
        clerps = {n["node_id"]: n["clerp"] for n in client.get("/api/graphs/s").json()["nodes"]}
        assert clerps[f"{layer}_{feat}_1"] == "relabelled"
    store.close()


def test_label_book_order_and_feature_keys() -> None:
    node = {"feature_type": "cross layer transcoder", "feature": cantor_pair(3, 17), "layer": "3"}
    assert feature_key(node, cantor=True) == (3, 17)
    assert feature_key({**node, "feature": 17}, cantor=False) == (3, 17)
    assert feature_key({"feature_type": "embedding", "feature": 4}, cantor=True) is None
    book = LabelBook(by_key=({(3, 17): "bundle"}, {(3, 17): "store", (1, 2): "store only"}))
    assert book.lookup(node, True) == "bundle"
    assert book.lookup({**node, "feature": cantor_pair(1, 2)}, True) == "store only"
    assert book.with_clerps([[cantor_pair(3, 17), "saved"]]).lookup(node, True) == "saved"
    assert book.lookup({"feature_type": "logit", "feature": cantor_pair(3, 17)}, True) == ""


def test_special_tokens_are_left_out_of_logit_lists(data_dir: Path, tmp_path: Path) -> None:
    for token in ("<pad>", "<unk>", "<bos>", "<eos>", "</s>", "<s>", "<|endoftext|>", "[CLS]",
                  "<start_of_turn>", "<unused7>", "<|begin_of_text|>"):
        assert is_special_token(token), token
    for token in (" the", "<table>", "pad", "<", "[x]", "s", " <pad"):
        assert not is_special_token(token), token
    record = {"top_logits": [" Austin", "<pad>", "<unk>", " Texas", "<eos>"],
              "bottom_logits": ["<bos>", " Paris"], "index": 3}
    assert without_special_tokens(record) == {"top_logits": [" Austin", " Texas"],
                                              "bottom_logits": [" Paris"], "index": 3}
    # Through the API, with the demo store (whose features promote <pad> and friends).
    store = FeatureStore(demo_features_path("clt"))
    client = TestClient(create_app(data_dir, features=store))
    seen_special = False
    for index in range(0, 1024, 64):
        raw = store.feature(0, index)
        seen_special |= any(is_special_token(t) for t in raw["top_logits"] + raw["bottom_logits"])
        served = client.get(f"/api/features/0/{index}").json()["feature"]
        assert not any(is_special_token(t) for t in served["top_logits"] + served["bottom_logits"])
        assert served["top_logits"] == [t for t in raw["top_logits"] if not is_special_token(t)]
    assert seen_special, "the check needs a feature whose raw lists hold special tokens"
    store.close()
