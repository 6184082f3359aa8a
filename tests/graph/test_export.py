"""Graph JSON export (docs/graph-json.md §2–§9), the JSON schema, and the reader."""

from __future__ import annotations

import json

import jsonschema
import pytest

from circuit_atlas.graph import (
    GraphFileError,
    cantor_pair,
    prune,
    random_graph,
    read_graph_json,
    to_graph_json,
    update_graph_metadata,
    write_graph_json,
)
from circuit_atlas.graph.export import SCHEMA_FILE

# circuit-tracer's writer's output on a synthetic 2-layer, 3-token graph (abridged)
REFERENCE_EXAMPLE = json.loads(r"""
{
  "metadata": {"slug": "demo", "scan": "org/repo", "transcoder_list": [],
               "prompt_tokens": ["<bos>", "The", " cat"], "prompt": "<bos>The cat",
               "node_threshold": 0.8, "schema_version": 1},
  "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
  "nodes": [
    {"node_id": "0_3_1", "feature": 9, "layer": "0", "ctx_idx": 1,
     "feature_type": "cross layer transcoder", "token_prob": 0.0, "is_target_logit": false,
     "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": "0_3-0", "clerp": "",
     "influence": 0.4977, "activation": 1.5},
    {"node_id": "E_5_1", "feature": 1, "layer": "E", "ctx_idx": 1,
     "feature_type": "embedding", "token_prob": 0.0, "is_target_logit": false,
     "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": "E_5-1", "clerp": "",
     "influence": 0.6841, "activation": null},
    {"node_id": "3_8_2", "feature": 8, "layer": "3", "ctx_idx": 2,
     "feature_type": "logit", "token_prob": 0.6, "is_target_logit": true,
     "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": "L_8-2",
     "clerp": "Output \" sat\" (p=0.600)", "influence": null, "activation": null}
  ],
  "links": [
    {"source": "E_5_1", "target": "0_3_1", "weight": 2.0},
    {"source": "0_3_1", "target": "3_8_2", "weight": 0.3}
  ]
}
""")


@pytest.fixture(scope="module")
def schema() -> dict:
    document = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(document)
    return document


@pytest.fixture(scope="module")
def graph():
    return random_graph(n_layers=3, n_pos=6, n_sel=40, n_logits=4, seed=9, n_custom_targets=1)


def validate(data: dict, schema: dict) -> None:
    jsonschema.Draft202012Validator(schema).validate(data)


def test_export_validates_and_matches_reference_structure(graph, schema) -> None:
    data = to_graph_json(graph, "demo")
    validate(data, schema)
    validate(REFERENCE_EXAMPLE, schema)  # the schema accepts circuit-tracer's output
    assert list(data) == list(REFERENCE_EXAMPLE)
    ref_meta_keys = list(REFERENCE_EXAMPLE["metadata"])
    assert list(data["metadata"])[: len(ref_meta_keys)] == ref_meta_keys
    assert data["qParams"] == REFERENCE_EXAMPLE["qParams"]
    node_keys = list(REFERENCE_EXAMPLE["nodes"][0])
    for node in data["nodes"]:
        assert list(node) == node_keys
    for link in data["links"]:
        assert list(link) == list(REFERENCE_EXAMPLE["links"][0])
    for key, value in REFERENCE_EXAMPLE["metadata"].items():
        assert type(data["metadata"][key]) is type(value), key


def test_export_node_contents(graph) -> None:
    pruned = prune(graph, 0.8, 0.98)
    data = to_graph_json(graph, "demo", pruned=pruned)
    by_id = {node["node_id"]: node for node in data["nodes"]}
    assert len(by_id) == len(data["nodes"])
    L, P = graph.n_layers, graph.n_positions
    types = [node["feature_type"] for node in data["nodes"]]
    order = ["cross layer transcoder", "mlp reconstruction error", "embedding", "logit"]
    assert types == sorted(types, key=order.index), "nodes in adjacency order"
    for j in range(graph.n_selected):
        node = by_id.get(graph.node_id(j))
        if node is None:
            continue
        layer, pos, feat = graph.feature_coords[j].tolist()
        assert node["feature"] == cantor_pair(layer, feat) and node["layer"] == str(layer)
        assert node["ctx_idx"] == pos and node["jsNodeId"] == f"{layer}_{feat}-0"
        assert node["activation"] == pytest.approx(float(graph.selected_activations[j]))
        assert node["influence"] == pytest.approx(float(pruned.cumulative_scores[j]))
    errors = [n for n in data["nodes"] if n["feature_type"] == "mlp reconstruction error"]
    for node in errors:
        assert node["node_id"] == f"{node['layer']}_-1_{node['ctx_idx']}" and node["feature"] == -1
    tokens = [n for n in data["nodes"] if n["feature_type"] == "embedding"]
    assert [n["ctx_idx"] for n in tokens] == list(range(P)), "all embeddings are written"
    assert [n["feature"] for n in tokens] == list(range(P))
    logits = [n for n in data["nodes"] if n["feature_type"] == "logit"]
    assert len(logits) == graph.n_logits
    assert [n["is_target_logit"] for n in logits] == [True] + [False] * (graph.n_logits - 1)
    for i, node in enumerate(logits):
        vocab = int(graph.logit_token_ids[i])
        assert node["node_id"] == f"{L + 1}_{vocab}_{P - 1}" and node["layer"] == str(L + 1)
        prob = float(graph.logit_probabilities[i])
        assert node["clerp"] == f'Output "{graph.logit_tokens[i]}" (p={prob:.3f})'
        assert node["influence"] is None and node["token_prob"] == pytest.approx(prob)


def test_export_links(graph) -> None:
    data = to_graph_json(graph, "demo", 0.7, 0.95)
    pruned = prune(graph, 0.7, 0.95)
    index = {graph.node_id(i): i for i in range(graph.n_nodes)}
    dense = graph.dense_adjacency()
    written = {n["node_id"] for n in data["nodes"]}
    positions = []
    for link in data["links"]:
        t, s = index[link["target"]], index[link["source"]]
        assert link["weight"] == float(dense[t, s]), "raw, signed weights"
        assert link["weight"] != 0.0
        assert pruned.edge_mask[t, s] and pruned.node_mask[t] and pruned.node_mask[s]
        assert {link["source"], link["target"]} <= written
        positions.append((t, s))
    assert positions == sorted(positions), "row-major order"
    assert len(data["links"]) == pruned.n_kept_edges
    touched = {link["source"] for link in data["links"]} | {link["target"] for link in data["links"]}
    for node in data["nodes"]:
        if node["feature_type"] in ("cross layer transcoder", "mlp reconstruction error"):
            assert node["node_id"] in touched


def test_thresholds_one_export_every_reachable_edge(graph) -> None:
    data = to_graph_json(graph, "all", 1.0, 1.0)
    assert len(data["links"]) == prune(graph, 1.0, 1.0).n_kept_edges > len(
        to_graph_json(graph, "few", 0.5, 0.5)["links"]
    )


def test_labels_scan_and_settings(graph, schema) -> None:
    first = graph.node_id(0)
    layer, _, feat = graph.feature_coords[1].tolist()
    labels = {first: "my label", (layer, feat): "by layer/feature"}
    data = to_graph_json(graph, "lab", 1.0, 1.0, labels=labels, scan="gemma-2-2b")
    by_id = {n["node_id"]: n for n in data["nodes"]}
    assert by_id[first]["clerp"] == "my label"
    assert by_id[graph.node_id(1)]["clerp"] == "by layer/feature"
    assert data["metadata"]["scan"] == "gemma-2-2b"
    assert data["metadata"]["generation_settings"] == graph.settings
    assert data["metadata"]["pruning_settings"] == {"node_threshold": 1.0, "edge_threshold": 1.0}
    validate(data, schema)


def test_scan_list_gives_stable_custom_id(graph, schema) -> None:
    import dataclasses

    other = dataclasses.replace(graph, transcoder_scan=["x/a", "x/b", "x/c"])
    meta = to_graph_json(other, "s")["metadata"]
    assert meta["scan"].startswith("custom-") and meta["transcoder_list"] == ["x/a", "x/b", "x/c"]
    assert to_graph_json(other, "s")["metadata"]["scan"] == meta["scan"]
    no_scan = dataclasses.replace(graph, transcoder_scan=None)
    assert to_graph_json(no_scan, "s")["metadata"]["scan"] == graph.model_name


def test_bad_slug_and_thresholds(graph) -> None:
    from circuit_atlas.errors import AttributionError

    for slug in ("", "a/b", "../x", ".hidden"):
        with pytest.raises(GraphFileError, match="slug"):
            to_graph_json(graph, slug)
    with pytest.raises(AttributionError, match="node_threshold"):
        to_graph_json(graph, "ok", node_threshold=2)


def test_write_and_index(graph, tmp_path, schema) -> None:
    out = tmp_path / "site" / "data"
    path = write_graph_json(graph, out, "first", indent=2)
    assert path == out / "first.json"
    validate(json.loads(path.read_text()), schema)
    write_graph_json(graph, out, "second")
    write_graph_json(graph, out, "first", node_threshold=0.5)  # replaces, moves to the end
    index = json.loads((out / "graph-metadata.json").read_text())
    assert [g["slug"] for g in index["graphs"]] == ["second", "first"]
    assert index["graphs"][-1]["node_threshold"] == 0.5
    assert index["graphs"][-1] == json.loads((out / "first.json").read_text())["metadata"]


def test_update_graph_metadata_errors(tmp_path) -> None:
    (tmp_path / "graph-metadata.json").write_text("[1, 2]")
    with pytest.raises(GraphFileError, match="not a graph index"):
        update_graph_metadata(tmp_path, {"slug": "x"})
    (tmp_path / "graph-metadata.json").write_text("{broken")
    with pytest.raises(GraphFileError, match="not valid JSON"):
        update_graph_metadata(tmp_path, {"slug": "x"})
    with pytest.raises(GraphFileError, match="slug"):
        update_graph_metadata(tmp_path, {"scan": "x"})


def test_read_round_trip(graph, tmp_path) -> None:
    path = write_graph_json(graph, tmp_path, "g")
    assert read_graph_json(path) == json.loads(path.read_text())


def test_read_accepts_legacy_error_ids_and_string_qparams(tmp_path, schema) -> None:
    legacy = json.loads(json.dumps(REFERENCE_EXAMPLE))
    legacy["nodes"].insert(1, {
        "node_id": "0_1_2", "feature": -1, "layer": 1, "ctx_idx": 2,
        "feature_type": "mlp reconstruction error", "jsNodeId": "1_2-0", "clerp": "",
    })
    legacy["links"].append({"source": "0_1_2", "target": "3_8_2", "weight": -0.5})
    legacy["qParams"] = {
        "pinnedIds": "0_3_1,0_1_2", "supernodes": '[["group", "0_3_1", "0_1_2"]]',
        "linkType": "both", "clickedId": "0_1_2", "sg_pos": "", "clerps": '[["9", "hi"]]',
    }
    path = tmp_path / "legacy.json"
    path.write_text(json.dumps(legacy))
    data = read_graph_json(path)
    error = data["nodes"][1]
    assert error["node_id"] == "1_-1_2" and error["jsNodeId"] == "1_-1-2" and error["layer"] == "1"
    assert data["links"][-1]["source"] == "1_-1_2"
    assert data["qParams"]["pinnedIds"] == ["0_3_1", "1_-1_2"]
    assert data["qParams"]["supernodes"] == [["group", "0_3_1", "1_-1_2"]]
    assert data["qParams"]["clickedId"] == "1_-1_2"
    assert data["qParams"]["clerps"] == [["9", "hi"]]
    # the string forms are valid under our schema too (what the UI saves)
    validate({**REFERENCE_EXAMPLE, "qParams": legacy["qParams"]}, schema)


def test_read_rejects_ambiguous_and_broken_files(tmp_path) -> None:
    clash = json.loads(json.dumps(REFERENCE_EXAMPLE))
    clash["nodes"].insert(1, {"node_id": "0_3_1", "feature": -1, "layer": "3", "ctx_idx": 1,
                              "feature_type": "mlp reconstruction error", "jsNodeId": "3_1-0",
                              "clerp": ""})
    (tmp_path / "clash.json").write_text(json.dumps(clash))
    with pytest.raises(GraphFileError, match="ambiguous"):
        read_graph_json(tmp_path / "clash.json")
    dangling = json.loads(json.dumps(REFERENCE_EXAMPLE))
    dangling["links"].append({"source": "nowhere", "target": "3_8_2", "weight": 1.0})
    (tmp_path / "dangling.json").write_text(json.dumps(dangling))
    with pytest.raises(GraphFileError, match="unknown node 'nowhere'"):
        read_graph_json(tmp_path / "dangling.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(GraphFileError, match="not valid JSON"):
        read_graph_json(tmp_path / "broken.json")
    with pytest.raises(GraphFileError, match="does not exist"):
        read_graph_json(tmp_path / "missing.json")
    (tmp_path / "partial.json").write_text('{"metadata": {}}')
    with pytest.raises(GraphFileError, match="nodes"):
        read_graph_json(tmp_path / "partial.json")


def test_newline_tokens_and_quotes_validate(schema) -> None:
    import dataclasses

    g = random_graph(n_layers=2, n_pos=4, n_sel=10, n_logits=2, seed=0)
    g = dataclasses.replace(g, logit_tokens=["\n", 'say "hi"'], tokens=["<bos>", "\n", "\t", " é"])
    data = to_graph_json(g, "nl")
    validate(data, schema)
    assert json.loads(json.dumps(data, allow_nan=False)) == data
