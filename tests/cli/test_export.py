"""`circuit-atlas export` end to end on a saved synthetic graph."""

from __future__ import annotations

import json

import jsonschema
import pytest

from circuit_atlas.cli.main import main
from circuit_atlas.graph import random_graph, to_graph_json
from circuit_atlas.graph.export import SCHEMA_FILE


@pytest.fixture
def graph_dir(tmp_path):
    graph = random_graph(n_layers=3, n_pos=5, n_sel=25, n_logits=3, seed=4)
    return graph, graph.save(tmp_path / "dallas")


def test_export_default_output(graph_dir, capsys) -> None:
    graph, directory = graph_dir
    assert main(["export", str(directory), "--format", "neuronpedia"]) == 0
    out = directory / "dallas.json"
    assert str(out) in capsys.readouterr().out
    data = json.loads(out.read_text())
    jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text())).validate(data)
    assert data == to_graph_json(graph, "dallas")
    index = json.loads((directory / "graph-metadata.json").read_text())
    assert [g["slug"] for g in index["graphs"]] == ["dallas"]


def test_export_out_file_and_thresholds(graph_dir, tmp_path) -> None:
    graph, directory = graph_dir
    out = tmp_path / "upload" / "v2.json"
    code = main(["export", str(directory), "--out", str(out), "--node-threshold", "0.5",
                 "--edge-threshold", "0.9", "--no-index", "--scan", "gemma-2-2b"])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["metadata"]["slug"] == "v2" and data["metadata"]["scan"] == "gemma-2-2b"
    assert data == to_graph_json(graph, "v2", 0.5, 0.9, scan="gemma-2-2b")
    assert not (out.parent / "graph-metadata.json").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--node-threshold", "1.5"], "--node-threshold must lie in [0, 1]"),
        (["--edge-threshold", "-1"], "--edge-threshold must lie in [0, 1]"),
        (["--slug", "a/b"], "slug 'a/b' is not valid"),
        (["--out", "x.txt"], "--out must name a .json file"),
        (["--out", "x.json", "--slug", "y"], "differs from the --out file name"),
    ],
)
def test_export_bad_arguments(graph_dir, capsys, extra, message) -> None:
    _, directory = graph_dir
    assert main(["export", str(directory), *extra]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_export_bad_path(tmp_path, capsys) -> None:
    assert main(["export", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty")]) == 1
    assert "graph.json is missing" in capsys.readouterr().err


def test_export_help_has_an_example(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["export", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "circuit-atlas export graphs/dallas" in text


@pytest.mark.parametrize("field, index, needle", [
    ("activation_values", 2, "non-finite number (activation_values[2] is nan"),
    ("logit_probabilities", 0, "non-finite number (logit_probabilities[0] is nan"),
    ("adjacency", (1, 4), "Graph.adjacency holds NaN or infinite values"),  # refused when loaded
])
def test_export_of_a_graph_with_nan_is_a_clear_error_leaving_nothing(graph_dir, tmp_path, capsys,
                                                                       field, index, needle) -> None:
    graph, directory = graph_dir
    getattr(graph, field)[index] = float("nan")
    graph.save(directory)
    out = tmp_path / "upload"
    assert main(["export", str(directory), "--out", str(out / "x.json")]) != 0
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not out.exists() or not list(out.iterdir())  # no x.json, no .json.tmp
    assert sorted(p.name for p in directory.iterdir()) == ["graph.json", "graph.safetensors"]
