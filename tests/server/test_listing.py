"""The graph list behind the graph browser: what each graph says about itself, without paths."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from fastapi.testclient import TestClient

from circuit_atlas.graph import graph_scores, to_graph_json, write_graph_bundle
from circuit_atlas.io.presets import DEMO_MODEL
from circuit_atlas.server.app import create_app
from circuit_atlas.server.listing import display_ref


def test_list_reports_summaries_of_bundles_and_loose_files(tmp_path: Path, graph) -> None:
    write_graph_bundle(graph, tmp_path, "bundled", node_threshold=0.8, edge_threshold=0.98)
    doc = to_graph_json(graph, "loose", 1.0, 1.0)
    doc["metadata"]["info"]["model"] = "/home/someone/models/My-Model-7B"
    (tmp_path / "loose.json").write_text(json.dumps(doc))
    stamp = datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone.utc).timestamp()
    os.utime(tmp_path / "loose.json", (stamp, stamp))
    listing = TestClient(create_app(tmp_path)).get("/api/graphs").json()["graphs"]
    by_id = {g["id"]: g for g in listing}

    bundled = by_id["bundled"]
    view = json.loads((tmp_path / "bundled" / "bundled.json").read_text())
    scores = graph_scores(graph)
    assert bundled["n_nodes"] == len(view["nodes"]) and bundled["n_links"] == len(view["links"])
    assert abs(bundled["replacement"] - scores.replacement) < 1e-9
    assert abs(bundled["completeness"] - scores.completeness) < 1e-9
    assert bundled["n_tokens"] == len(graph.tokens) and bundled["n_features"] == graph.n_selected
    assert bundled["model"] == graph.model_name and bundled["transcoders"] == graph.transcoder_scan
    assert datetime.fromisoformat(bundled["created"]).year >= 2025

    loose = by_id["loose"]
    assert loose["n_nodes"] == len(doc["nodes"]) and loose["n_links"] == len(doc["links"])
    assert loose["created"] == "2025-03-04T05:06:07+00:00"
    assert loose["replacement"] is None and loose["completeness"] is None
    assert loose["model"] == "My-Model-7B"  # a local folder is named, never its path
    assert "/home/someone" not in json.dumps(listing)


def test_display_ref_never_shows_a_path() -> None:
    assert display_ref("google/gemma-2-2b") == "google/gemma-2-2b"
    assert display_ref("mntss/clt-llama-3.2-1b-524k@main") == "mntss/clt-llama-3.2-1b-524k@main"
    assert display_ref("/data/models/llama/") == "llama"
    assert display_ref("~/ckpt/run-3") == "run-3"
    assert display_ref("C:\\models\\qwen") == "qwen"
    assert display_ref(str(DEMO_MODEL.path)) == "demo"
    assert display_ref(None) is None and display_ref("") is None


def test_summary_fields_from_a_hand_edited_bundle_are_checked(tmp_path: Path, graph) -> None:
    folder = write_graph_bundle(graph, tmp_path, "edited")
    info = json.loads((folder / "bundle.json").read_text())
    info["summary"].update(created="yesterday", model=["not", "text"], n_nodes=-3, n_links=2.5,
                           replacement=7.0, completeness=float("nan"), transcoders="/srv/x/my-clt")
    (folder / "bundle.json").write_text(json.dumps(info))
    row = TestClient(create_app(tmp_path)).get("/api/graphs").json()["graphs"][0]
    assert row["created"] is None and row["model"] is None and row["n_nodes"] is None
    assert row["n_links"] is None and row["replacement"] is None and row["completeness"] is None
    assert row["transcoders"] == "my-clt" and row["n_tokens"] == len(graph.tokens)
