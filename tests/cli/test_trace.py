"""`circuit-atlas trace` end to end on a tiny model saved to disk, as a user would run it."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from circuit_atlas.cli.main import main
from circuit_atlas.graph import Graph
from circuit_atlas.graph.export import SCHEMA_FILE
from circuit_atlas.models.tiny import tiny_language_model
from circuit_atlas.transcoders.random import random_transcoders


def test_trace_writes_a_loadable_graph_and_a_valid_pruned_view(saved_pair, tmp_path, capsys):
    model_dir, tc_dir = saved_pair
    out = tmp_path / "graphs"
    code = main([
        "trace", "--model", str(model_dir), "--transcoders", str(tc_dir),
        "--prompt", "the capital of Texas is", "--out", str(out), "--max-feature-nodes", "40",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "replacement score" in printed and "completeness score" in printed and "top logits" in printed
    folder = out / "the-capital-of-texas-is"
    graph = Graph.load(folder / "graph")
    assert graph.tokens[0] == "<bos>" and graph.selected_features.shape[0] == 40
    view = json.loads((folder / "the-capital-of-texas-is.json").read_text())
    jsonschema.validate(view, json.loads(SCHEMA_FILE.read_text()))
    ids = {node["node_id"] for node in view["nodes"]}
    assert all(link["source"] in ids and link["target"] in ids for link in view["links"])
    # Every link weight is the graph's raw adjacency entry.
    index = {node_id: i for i, node_id in enumerate(graph.node_ids())}
    dense = graph.dense_adjacency()
    for link in view["links"][:50]:
        assert dense[index[link["target"]], index[link["source"]]].item() == pytest.approx(link["weight"], rel=1e-5, abs=1e-6)


def test_trace_with_token_ids_and_logit_difference(saved_pair, tmp_path):
    model_dir, tc_dir = saved_pair
    code = main([
        "trace", "--model", str(model_dir), "--transcoders", str(tc_dir), "--token-ids", "1,8,14,9",
        "--logit-diff", "Austin", "Dallas", "--out", str(tmp_path), "--slug", "diff", "--max-feature-nodes", "10",
    ])
    assert code == 0
    graph = Graph.load(tmp_path / "diff" / "graph")
    assert torch.equal(graph.input_ids, torch.tensor([1, 8, 14, 9]))
    assert graph.logit_tokens == ["Austin − Dallas"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--token-ids", "1,x"], "comma-separated integers"),
        (["--prompt", "the", "--targets", "the cat"], "single token"),
        (["--prompt", "the", "--node-threshold", "1.5"], "threshold"),
        (["--token-ids", ""], "--token-ids is empty"),  # was an AttributeError traceback
        (["--token-ids", " , ,"], "--token-ids is empty"),
        (["--prompt", "   "], "holds no words"),  # was traced as an empty-looking graph 'graph'
        (["--prompt", "\n\t"], "holds no words"),
    ],
)
def test_trace_bad_input_prints_an_error_not_a_traceback(saved_pair, tmp_path, capsys, extra, message):
    model_dir, tc_dir = saved_pair
    out = tmp_path / "out"
    code = main(["trace", "--model", str(model_dir), "--transcoders", str(tc_dir), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 1 and message in err and "Traceback" not in err
    assert not out.exists() or not list(out.iterdir())  # nothing traced, nothing written


def test_trace_warns_about_words_the_demo_vocabulary_lacks(tmp_path, capsys):
    code = main(["trace", "--model", "demo", "--transcoders", "demo", "--out", str(tmp_path),
                 "--prompt", "the capital of atlantis is", "--max-feature-nodes", "16"])
    err = capsys.readouterr().err
    assert code == 0
    assert "warning: 1 word(s) of the prompt are not in the tokenizer's vocabulary and became <unk>: 'atlantis'" in err
    assert "Traceback" not in err and "UserWarning" not in err


def test_trace_missing_model_dir_is_a_clear_error(tmp_path, capsys):
    code = main(["trace", "--model", str(tmp_path / "nope"), "--transcoders", str(tmp_path), "--prompt", "x", "--out", str(tmp_path)])
    assert code == 1 and "nope" in capsys.readouterr().err


def test_trace_with_features_puts_store_labels_into_the_graph(saved_pair, tmp_path):
    import circuit_atlas
    from circuit_atlas.features import FeatureStore, build_feature_store

    model_dir, tc_dir = saved_pair
    model = circuit_atlas.load(str(model_dir), str(tc_dir))
    texts = ["the cat sat on the mat . the dog saw a bird", "the capital of Texas is Austin . Dallas is big"]
    store_dir = tmp_path / "features"
    build_feature_store(model, texts, store_dir, progress=False)
    common = ["trace", "--model", str(model_dir), "--transcoders", str(tc_dir), "--prompt", "the capital of Texas is",
              "--out", str(tmp_path / "graphs"), "--slug", "t", "--max-feature-nodes", "40"]
    assert main(common) == 0
    view = json.loads((tmp_path / "graphs" / "t" / "t.json").read_text())
    feature_node = next(n for n in view["nodes"] if n["feature_type"] == "cross layer transcoder")
    layer, feature, _ = (int(x) for x in feature_node["node_id"].split("_"))
    FeatureStore(store_dir).set_label(layer, feature, "texas-ish")
    assert main(common + ["--features", str(store_dir)]) == 0
    relabelled = json.loads((tmp_path / "graphs" / "t" / "t.json").read_text())
    labelled = {n["node_id"]: n["clerp"] for n in relabelled["nodes"]}
    assert labelled[feature_node["node_id"]] == "texas-ish"


def test_trace_features_folder_without_a_store_is_an_error(saved_pair, tmp_path, capsys):
    model_dir, tc_dir = saved_pair
    code = main(["trace", "--model", str(model_dir), "--transcoders", str(tc_dir), "--prompt", "the",
                 "--out", str(tmp_path), "--features", str(tmp_path)])
    assert code == 1 and "no feature store" in capsys.readouterr().err


def test_trace_serve_starts_the_explorer_on_the_output_folder_with_the_model(saved_pair, tmp_path, monkeypatch):
    import circuit_atlas.cli.serve as serve_cli
    from circuit_atlas.server import create_app

    calls = {}

    def fake_serve_folder(data_dir, **kwargs):
        calls.update(kwargs, data_dir=data_dir)

    monkeypatch.setattr(serve_cli, "serve_folder", fake_serve_folder)
    model_dir, tc_dir = saved_pair
    out = tmp_path / "graphs"
    assert main(["trace", "--model", str(model_dir), "--transcoders", str(tc_dir), "--prompt", "the capital of Texas is",
                 "--out", str(out), "--slug", "s", "--max-feature-nodes", "20", "--serve", "--no-browser", "--port", "8123"]) == 0
    assert calls["data_dir"] == out and calls["port"] == 8123 and calls["open_browser"] is False
    assert calls["host"] == "127.0.0.1" and calls["model"] is not None
    assert calls["graph"] == "s"  # the browser opens on the graph just traced
    # The folder it would serve lists the new graph and can steer it with that model.
    from fastapi.testclient import TestClient

    client = TestClient(create_app(out, model=calls["model"]))
    listing = client.get("/api/graphs").json()["graphs"]
    assert [g["id"] for g in listing] == ["s"]
    assert client.get("/api/graphs/s/steer").json()["available"] is True


def test_a_local_transcoder_folder_is_recorded_as_typed(tmp_path, monkeypatch):
    """A folder whose config names no scan is recorded as the user gave it, in the graph and in
    its JSON view: never as the resolved path, which names the host's folders (issue 15)."""
    tiny_language_model("llama", seed=1, n_layers=2, d_model=32).save(tmp_path / "model")
    tc = random_transcoders("plt", n_layers=2, d_model=32, n_features=16, seed=3,
                            input_hook="hook_resid_mid", output_hook="hook_mlp_out")
    tc.scan = None  # a hand-made set: its config names no scan
    tc.save_native(tmp_path / "my-set")
    monkeypatch.chdir(tmp_path)
    code = main(["trace", "--model", "model", "--transcoders", "my-set", "--prompt", "the cat",
                 "--out", "graphs", "--slug", "cat", "--max-feature-nodes", "8"])
    assert code == 0
    assert Graph.load(tmp_path / "graphs" / "cat" / "graph").transcoder_scan == "my-set"
    view = json.loads((tmp_path / "graphs" / "cat" / "cat.json").read_text())
    assert view["metadata"]["scan"] == "my-set"
    for file in (tmp_path / "graphs").rglob("*.json"):
        text = file.read_text()
        assert str(tmp_path) not in text and str(tmp_path.resolve()) not in text, file


def test_trace_with_a_device_map_that_offloads_layers_gives_the_same_graph(saved_pair, tmp_path):
    """--device-map with a layer and the LM head on disk (accelerate's offload, the multi-device
    mechanism a CPU can run) traces the graph the plainly loaded model gives."""
    pytest.importorskip("accelerate")
    model_dir, tc_dir = saved_pair
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "disk", "model.layers.1": "cpu",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "disk"}
    common = ["trace", "--model", str(model_dir), "--transcoders", str(tc_dir), "--prompt",
              "the capital of Texas is", "--out", str(tmp_path), "--max-feature-nodes", "20"]
    assert main([*common, "--slug", "plain"]) == 0
    assert main([*common, "--slug", "mapped", "--device-map", json.dumps(device_map),
                 "--offload-folder", str(tmp_path / "offload")]) == 0
    plain, mapped = Graph.load(tmp_path / "plain" / "graph"), Graph.load(tmp_path / "mapped" / "graph")
    assert torch.equal(plain.selected_features, mapped.selected_features)
    assert torch.allclose(mapped.adjacency, plain.adjacency, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("extra, message", [
    (["--device-map", "everywhere"], "--device-map 'everywhere' is neither a strategy"),
    (["--device-map", "auto", "--device", "cpu"], "either --device or --device-map"),
    (["--offload-folder", "x"], "--offload-folder only applies"),
    (["--device-map", '{"model": "cpu", "lm_head": "disk"}'], "give offload_folder"),
])
def test_trace_bad_device_map_is_one_line(saved_pair, tmp_path, capsys, extra, message):
    model_dir, tc_dir = saved_pair
    code = main(["trace", "--model", str(model_dir), "--transcoders", str(tc_dir), "--prompt", "the",
                 "--out", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert code != 0 and message in err and "Traceback" not in err


def test_device_map_is_refused_under_torchrun_and_kept_for_one_process():
    from argparse import Namespace

    from circuit_atlas.cli.common import rank_placement
    from circuit_atlas.errors import CircuitAtlasError

    args = Namespace(device=None, device_map="auto", offload_folder=None)
    with pytest.raises(CircuitAtlasError, match="torchrun"):
        rank_placement(args, world_size=2)
    assert rank_placement(args, world_size=1) == {"device": None, "device_map": "auto",
                                                  "offload_folder": None}
    assert rank_placement(Namespace(device="cpu", device_map=None, offload_folder=None), 2) == {
        "device": "cpu"}
