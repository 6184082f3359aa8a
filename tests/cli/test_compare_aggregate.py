"""`circuit-atlas compare` and `circuit-atlas aggregate` on bundles of synthetic graphs."""

from __future__ import annotations

import dataclasses
import json

import torch

from circuit_atlas.cli.main import main
from circuit_atlas.graph import Graph, random_graph
from circuit_atlas.graph.bundle import write_graph_bundle
from circuit_atlas.server.catalog import GraphCatalog


def _bundles(tmp_path, n=3):
    base = random_graph(n_layers=3, n_pos=6, n_sel=30, n_logits=2, seed=1)
    out = tmp_path / "graphs"
    for i in range(n):
        scale = torch.rand(base.adjacency.shape, generator=torch.Generator().manual_seed(i)) * 2
        graph = dataclasses.replace(base, adjacency=base.adjacency * scale)
        layer, _, feature = base.feature_coords[0].tolist()
        write_graph_bundle(graph, out, f"g{i}", labels={(layer, feature): "my label"})
    return out


def test_compare_prints_the_differences_and_writes_json(tmp_path, capsys):
    out = _bundles(tmp_path, 2)
    assert main(["compare", str(out / "g0"), str(out / "g1"), "--json", str(tmp_path / "c.json")]) == 0
    text = capsys.readouterr().out
    for heading in ("A: ", "B: ", "target:", "disappeared", "appeared", "changed most", "edges that changed"):
        assert heading in text
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["format"] == "circuit-atlas-graph-comparison" and data["nodes"]
    assert any(n["label"] == "my label" for n in data["nodes"])  # the bundles' labels


def test_compare_bad_paths_are_clear_errors(tmp_path, capsys):
    out = _bundles(tmp_path, 1)
    assert main(["compare", str(out / "g0"), str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert "missing" in err and "Traceback" not in err
    assert main(["compare", str(out), str(out / "g0")]) == 1
    assert "data folder holding graph bundles" in capsys.readouterr().err


def test_aggregate_writes_tables_and_a_typical_circuit_the_explorer_lists(tmp_path, capsys):
    out = _bundles(tmp_path, 3)
    args = ["aggregate", str(out), "--out", str(out), "--slug", "typical", "--json",
            str(tmp_path / "t.json"), "--min-frequency", "0.6"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "3 graphs" in text and "recurring features at the answer position" in text
    typical = Graph.load(out / "typical" / "graph")
    assert typical.settings["aggregate"]["graphs"] == 3
    assert "typical" in {e.slug for e in GraphCatalog(out).refresh()}
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["n_graphs"] == 3 and data["features"]
    # rerunning into the same folder does not count the typical circuit
    assert main(args) == 0
    assert "3 graphs" in capsys.readouterr().out


def test_aggregate_refuses_an_empty_folder_and_bad_frequency(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["aggregate", str(tmp_path / "empty")]) == 1
    assert "holds no graph bundles" in capsys.readouterr().err
    out = _bundles(tmp_path, 1)
    assert main(["aggregate", str(out), "--min-frequency", "0"]) == 1
    assert "--min-frequency" in capsys.readouterr().err


def test_supernodes_without_a_store_uses_the_graph_alone(tmp_path, capsys):
    out = _bundles(tmp_path, 1)
    assert main(["supernodes", str(out / "g0"), "--node-threshold", "1.0", "--min-similarity", "0.3",
                 "--json", str(tmp_path / "s.json")]) == 0
    assert "evidence: graph" in capsys.readouterr().out
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["evidence_used"] == ["graph"] and data["candidates"]
    assert main(["supernodes", str(out / "g0"), "--min-similarity", "2"]) == 1
    assert "--min-similarity" in capsys.readouterr().err
