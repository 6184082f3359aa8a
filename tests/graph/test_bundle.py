"""The data-folder layout: write_graph_bundle's files and what the catalog discovers."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.graph import Graph, graph_scores, random_graph, read_graph_json, to_graph_json
from circuit_atlas.graph.bundle import BUNDLE_FORMAT, write_graph_bundle
from circuit_atlas.server.catalog import GraphCatalog, GraphNotFound


def test_bundle_layout_round_trips(tmp_path: Path, graph) -> None:
    folder = write_graph_bundle(graph, tmp_path, "dallas", node_threshold=0.6, edge_threshold=0.9)
    assert folder == tmp_path / "dallas"
    assert Graph.load(folder / "graph") == graph
    on_disk = read_graph_json(folder / "dallas.json")
    expected = to_graph_json(graph, "dallas", 0.6, 0.9)
    assert [n["node_id"] for n in on_disk["nodes"]] == [n["node_id"] for n in expected["nodes"]]
    assert on_disk["links"] == expected["links"]
    info = json.loads((folder / "bundle.json").read_text())
    summary = info.pop("summary")
    assert info == {
        "format": BUNDLE_FORMAT,
        "version": 1,
        "slug": "dallas",
        "node_threshold": 0.6,
        "edge_threshold": 0.9,
    }
    # The summary the graph browser lists: sizes of the written view, the graph's own scores.
    scores = graph_scores(graph)
    assert summary["n_nodes"] == len(on_disk["nodes"]) and summary["n_links"] == len(on_disk["links"])
    assert summary["n_tokens"] == len(graph.tokens) and summary["n_features"] == graph.n_selected
    assert summary["replacement"] == pytest.approx(scores.replacement)
    assert summary["completeness"] == pytest.approx(scores.completeness)
    assert summary["model"] == graph.model_name and summary["transcoders"] == graph.transcoder_scan
    created = datetime.fromisoformat(summary["created"])
    assert abs((datetime.now(timezone.utc) - created).total_seconds()) < 120
    index = json.loads((folder / "graph-metadata.json").read_text())
    assert [g["slug"] for g in index["graphs"]] == ["dallas"]
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_rewriting_a_bundle_replaces_the_graph_and_keeps_annotations(tmp_path: Path, graph) -> None:
    folder = write_graph_bundle(graph, tmp_path, "g")
    (folder / "g.annotations.json").write_text('{"node_labels": {"x": "kept"}}')
    other = random_graph(n_layers=2, n_pos=4, n_sel=10, n_logits=2, seed=99)
    write_graph_bundle(other, tmp_path, "g")
    assert Graph.load(folder / "graph") == other
    assert json.loads((folder / "g.annotations.json").read_text())["node_labels"] == {"x": "kept"}


def test_bundle_refuses_foreign_folder_and_bad_slugs(tmp_path: Path, graph) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(CircuitAtlasError, match="not a circuit-atlas bundle"):
        write_graph_bundle(graph, tmp_path, "taken")
    for slug in ("../evil", "a/b", "", ".hidden", "x" * 200):
        with pytest.raises(CircuitAtlasError, match="slug"):
            write_graph_bundle(graph, tmp_path, slug)
    with pytest.raises(CircuitAtlasError, match="node_threshold"):
        write_graph_bundle(graph, tmp_path, "ok", node_threshold=1.5)


def test_catalog_finds_every_layout(tmp_path: Path, graph) -> None:
    root = tmp_path / "root"
    root.mkdir()
    write_graph_bundle(graph, root, "bundle")
    doc = to_graph_json(graph, "flat", 0.8, 0.98)
    (root / "flat.json").write_text(json.dumps(doc))
    (root / "sub").mkdir()
    (root / "sub" / "nested.json").write_text(json.dumps(doc))
    (root / "sub" / "nested.annotations.json").write_text("{}")
    (root / "sub" / "graph-metadata.json").write_text('{"graphs": []}')
    (root / "sub" / "random.json").write_text('[1, 2, 3]')
    (root / "notes.txt").write_text("not a graph")
    catalog = GraphCatalog(root)
    entries = {e.id: e for e in catalog.refresh()}
    assert set(entries) == {"bundle", "flat", "nested"}
    assert entries["bundle"].native_dir == (root / "bundle" / "graph").resolve()
    assert entries["bundle"].json_path is not None
    assert entries["flat"].native_dir is None
    assert entries["nested"].annotations_path == root / "sub" / "nested.annotations.json"
    with pytest.raises(GraphNotFound):
        catalog.get("missing")


def test_catalog_serves_a_folder_that_is_itself_a_bundle(tmp_path: Path, graph) -> None:
    folder = write_graph_bundle(graph, tmp_path, "solo")
    entries = GraphCatalog(folder).refresh()
    assert [e.id for e in entries] == ["solo"]
    assert entries[0].native_dir is not None


def test_catalog_gives_colliding_slugs_distinct_ids(tmp_path: Path, graph) -> None:
    doc = to_graph_json(graph, "same", 0.8, 0.98)
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "same.json").write_text(json.dumps(doc))
    ids = sorted(e.id for e in GraphCatalog(tmp_path).refresh())
    assert len(ids) == 2 and len(set(ids)) == 2 and "same" in ids


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_catalog_ignores_symlinks_that_leave_the_folder(tmp_path: Path, graph) -> None:
    outside = tmp_path / "outside"
    write_graph_bundle(graph, outside, "secret")
    (outside / "loose.json").write_text(json.dumps(to_graph_json(graph, "loose", 0.8, 0.98)))
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside / "secret", root / "linked-bundle")
    os.symlink(outside / "loose.json", root / "linked.json")
    os.symlink(outside, root / "linked-folder")
    assert GraphCatalog(root).refresh() == []
