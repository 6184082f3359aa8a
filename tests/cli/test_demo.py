"""`circuit-atlas demo` end to end on the bundled assets, and `demo` accepted by other commands."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import torch

import circuit_atlas
from circuit_atlas.cli.main import main
from circuit_atlas.demo import bundle
from circuit_atlas.graph import Graph
from circuit_atlas.graph.export import SCHEMA_FILE
from circuit_atlas.io.cantor import cantor_unpair


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_demo_no_browser_writes_a_valid_labelled_graph(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--no-browser", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "replacement score" in printed and "top features at the last two positions" in printed
    assert f"circuit-atlas serve {out}" in printed  # --no-browser: says how to browse, serves nothing
    slug = "the-capital-of-the-region-containing-dallas-is"
    graph = Graph.load(out / slug / "graph")
    assert graph.prompt.endswith(bundle.DEFAULT_PROMPT)
    assert graph.logit_tokens[0].strip() == "austin"  # the model's answer is the graph's top target
    view = json.loads((out / slug / f"{slug}.json").read_text())
    jsonschema.validate(view, json.loads(SCHEMA_FILE.read_text()))
    labels = json.loads((out / "features" / "labels.json").read_text())["labels"]
    features = [n for n in view["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert features, "the pruned view keeps feature nodes"
    # every feature node carries exactly the bundled store's label of its (layer, feature)
    for node in features:
        layer, feature = cantor_unpair(node["feature"])
        assert node["clerp"] == labels.get(f"{layer}:{feature}", "")
    assert any(node["clerp"] for node in features)
    # Nothing shared records a path the user did not type: the model is "demo", not the
    # package's install folder.
    assert view["metadata"]["info"]["model"] == "demo" and graph.model_name == "demo"
    package = str(Path(circuit_atlas.__file__).resolve().parent)
    for path in (out / slug).rglob("*.json"):
        assert package not in path.read_text(), path


def test_demo_refuses_words_outside_the_toy_world(tmp_path, capsys):
    code = main(["demo", "--no-browser", "--out", str(tmp_path), "--prompt", "the capital of atlantis is"])
    err = capsys.readouterr().err
    assert code == 1 and "atlantis" in err and "Traceback" not in err


def test_trace_accepts_demo_for_model_and_transcoders(tmp_path):
    code = main(["trace", "--model", "demo", "--transcoders", "demo-plt", "--prompt",
                 "the capital of the region containing seattle is", "--out", str(tmp_path),
                 "--slug", "seattle", "--max-feature-nodes", "64"])
    assert code == 0
    graph = Graph.load(tmp_path / "seattle" / "graph")
    assert graph.transcoder_kind == "plt" and graph.selected_features.shape[0] <= 64


def test_serve_loads_demo_for_steering():
    from circuit_atlas.cli.serve import load_steering_model

    model = load_steering_model("demo", "demo", None, None)
    assert model.transcoders.kind == "clt"
    assert model.lm.n_layers == model.transcoders.n_layers == 4


def test_export_keeps_the_labels_of_a_bundle_or_takes_them_from_features(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--no-browser", "--out", str(out)]) == 0
    slug = "the-capital-of-the-region-containing-dallas-is"
    stored = json.loads((out / "features" / "labels.json").read_text())["labels"]

    def check(view_file):
        nodes = [n for n in json.loads(view_file.read_text())["nodes"]
                 if n["feature_type"] == "cross layer transcoder"]
        assert nodes and any(n["clerp"] for n in nodes)
        for node in nodes:
            layer, feature = cantor_unpair(node["feature"])
            assert node["clerp"] == stored.get(f"{layer}:{feature}", "")

    # Re-exporting the bundle with other thresholds keeps the labels trace wrote ...
    assert main(["export", str(out / slug), "--node-threshold", "0.95", "--edge-threshold", "0.99"]) == 0
    check(out / slug / f"{slug}.json")
    # ... also when GRAPH_DIR names the bundle's graph/ subfolder ...
    inner = tmp_path / "inner" / "dallas.json"
    assert main(["export", str(out / slug / "graph"), "--out", str(inner), "--no-index"]) == 0
    check(inner)
    # ... and --features labels a graph exported anywhere else.
    target = tmp_path / "upload" / "dallas.json"
    assert main(["export", str(out / slug / "graph"), "--out", str(target), "--no-index",
                 "--features", str(out / "features")]) == 0
    check(target)
    capsys.readouterr()
