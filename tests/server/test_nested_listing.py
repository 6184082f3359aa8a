"""Bundles in nested folders (several `trace --prompts --out DIR/<group>` runs served as DIR):
listed down to three folders, with ids that tell equal slugs apart, and never past the limit or
round a symlink loop."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi.testclient import TestClient

from circuit_atlas.cli.main import main
from circuit_atlas.graph import write_graph_bundle
from circuit_atlas.server.app import create_app

from ..cli.conftest import saved_pair  # noqa: F401  (a fixture)
from ..cli.test_batch_trace import _args, _write


def _ids(root: Path) -> dict:
    return {g["id"]: g for g in TestClient(create_app(root)).get("/api/graphs").json()["graphs"]}


def test_nested_bundles_are_listed_to_three_levels(tmp_path: Path, graph) -> None:
    write_graph_bundle(graph, tmp_path / "cities", "dallas")
    write_graph_bundle(graph, tmp_path / "languages", "dallas")
    write_graph_bundle(graph, tmp_path / "runs" / "2026", "deep")
    write_graph_bundle(graph, tmp_path / "runs" / "2026" / "b", "too-deep")
    listed = _ids(tmp_path)
    assert set(listed) == {"dallas", "languages.dallas", "deep"}
    assert listed["languages.dallas"]["folder"] == "languages/dallas"
    assert listed["deep"]["folder"] == "runs/2026/deep"
    client = TestClient(create_app(tmp_path))
    assert client.get("/api/graphs/languages.dallas").status_code == 200
    assert client.get("/api/graphs/deep").status_code == 200


def test_a_symlink_loop_ends_at_the_depth_limit(tmp_path: Path, graph) -> None:
    write_graph_bundle(graph, tmp_path / "group", "dallas")
    os.symlink(tmp_path, tmp_path / "group" / "loop")
    os.symlink("/", tmp_path / "group" / "outside")
    listed = _ids(tmp_path)
    assert "dallas" in listed
    assert all(g["folder"].count("/") <= 3 for g in listed.values())
    assert not any("outside" in g["folder"] for g in listed.values())


def test_the_bundles_of_two_batch_traces_are_listed_together(saved_pair, tmp_path: Path) -> None:
    """`trace --prompts` into DIR/cities and DIR/more, then the explorer on DIR."""
    prompts = _write(tmp_path / "p.jsonl", ['"the capital of Texas is"', '{"prompt": "the capital of Ohio is", "slug": "ohio"}'])
    for group in ("cities", "more"):
        assert main(_args(saved_pair, prompts, tmp_path / "graphs" / group)) == 0
    listed = _ids(tmp_path / "graphs")
    assert set(listed) == {"the-capital-of-texas-is", "ohio", "more.the-capital-of-texas-is", "more.ohio"}
    assert listed["more.ohio"]["prompt"].startswith("<bos> the capital of") and listed["more.ohio"]["has_native"]
    client = TestClient(create_app(tmp_path / "graphs"))
    assert client.get("/api/graphs/more.ohio").status_code == 200
    assert client.get("/api/compare/ohio/more.the-capital-of-texas-is").status_code == 200
