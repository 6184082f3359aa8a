"""Shared fixtures: a data folder with one native bundle and one JSON-only graph."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import circuit_atlas
from circuit_atlas.graph import random_graph, to_graph_json
from circuit_atlas.models.tiny import tiny_language_model
from circuit_atlas.server.app import create_app
from circuit_atlas.server.bundle import write_graph_bundle
from circuit_atlas.transcoders.random import random_transcoders

STEER_PROMPT = "the capital of Texas is"


def steering_model():
    """The tiny traced model the steering tests share (2-layer Llama, 32-feature CLT)."""
    lm = tiny_language_model("llama", seed=3, n_layers=2, d_model=32)
    tc = random_transcoders("clt", n_layers=2, d_model=32, n_features=32, seed=5,
                            input_hook="hook_resid_mid", output_hook="hook_mlp_out")
    return circuit_atlas.load(lm, tc)


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
