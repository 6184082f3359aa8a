"""Shared fixtures: a data folder with one native bundle and one JSON-only graph (the `graph`
fixture and the steering model come from tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from circuit_atlas.graph import to_graph_json, write_graph_bundle
from circuit_atlas.server.app import create_app

from ..conftest import STEER_PROMPT, steering_model  # noqa: F401  (re-exported for the tests)


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
