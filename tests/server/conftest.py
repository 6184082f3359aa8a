"""Shared fixtures: a data folder with one native bundle and one JSON-only graph."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from circuit_atlas.graph import random_graph, to_graph_json
from circuit_atlas.server.app import create_app
from circuit_atlas.server.bundle import write_graph_bundle


@pytest.fixture(scope="module")
def graph():
    return random_graph(n_layers=3, n_pos=5, n_sel=40, n_logits=3, seed=7)


@pytest.fixture()
def data_dir(tmp_path: Path, graph) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    write_graph_bundle(graph, root, "demo", node_threshold=0.8, edge_threshold=0.98)
    loose = root / "loose"
    loose.mkdir()
    doc = to_graph_json(graph, "jsonly", node_threshold=1.0, edge_threshold=1.0)
    (loose / "jsonly.json").write_text(json.dumps(doc), encoding="utf-8")
    return root


@pytest.fixture()
def client(data_dir: Path) -> TestClient:
    return TestClient(create_app(data_dir))
