"""`circuit-atlas serve`: argument handling and a real server in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from circuit_atlas.cli.main import build_parser, main
from circuit_atlas.graph import random_graph
from circuit_atlas.graph.bundle import write_graph_bundle


def test_defaults_bind_loopback_on_8041() -> None:
    args = build_parser().parse_args(["serve", "graphs"])
    assert (args.data_dir, args.host, args.port, args.no_browser, args.features) == (
        "graphs",
        "127.0.0.1",
        8041,
        False,
        None,
    )
    args = build_parser().parse_args(
        ["serve", "g", "--port", "9000", "--host", "0.0.0.0", "--no-browser", "--features", "f"]
    )
    assert (args.port, args.host, args.no_browser, args.features) == (9000, "0.0.0.0", True, "f")


def test_missing_folder_is_a_clean_error(tmp_path: Path, capsys) -> None:
    assert main(["serve", str(tmp_path / "nope"), "--no-browser"]) == 1
    err = capsys.readouterr().err
    assert "is not a folder" in err and "Traceback" not in err


def test_bad_port_is_a_clean_error(tmp_path: Path, capsys) -> None:
    assert main(["serve", str(tmp_path), "--port", "70000", "--no-browser"]) == 1
    assert "--port" in capsys.readouterr().err


def test_missing_features_folder_is_a_clean_error(tmp_path: Path, capsys) -> None:
    assert main(["serve", str(tmp_path), "--features", str(tmp_path / "x"), "--no-browser"]) == 1
    assert "--features" in capsys.readouterr().err


def test_serve_subprocess_answers_api(tmp_path: Path) -> None:
    write_graph_bundle(random_graph(n_layers=2, n_pos=4, n_sel=12, n_logits=2, seed=1), tmp_path, "g")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "circuit_atlas.cli.main", "serve", str(tmp_path), "--port", "0", "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            match = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
            url = match.group(1) if match else None
        assert url, "the server never printed its URL"
        for _ in range(100):
            try:
                listing = httpx.get(f"{url}api/graphs", timeout=5).json()
                break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("the server did not answer")
        assert [g["id"] for g in listing["graphs"]] == ["g"]
        evil = httpx.get(f"{url}api/graphs", headers={"host": "attacker.example"}, timeout=5)
        assert evil.status_code == 400
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_steering_flags_need_each_other(tmp_path: Path, capsys) -> None:
    args = build_parser().parse_args(
        ["serve", "g", "--model", "m", "--transcoders", "t", "--device", "cpu", "--dtype", "float32"]
    )
    assert (args.model, args.transcoders, args.device, args.dtype) == ("m", "t", "cpu", "float32")
    assert main(["serve", str(tmp_path), "--model", "m", "--no-browser"]) == 1
    assert "--transcoders is missing" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--transcoders", "t", "--no-browser"]) == 1
    assert "--model is missing" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--device", "cpu", "--no-browser"]) == 1
    assert "need --model" in capsys.readouterr().err


def test_serve_loads_the_model_once_and_graphs_traced_with_it_are_steerable(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """Local model and transcoder folders: the held model matches graphs traced from the same
    folders, even when the path is spelled differently."""
    import circuit_atlas
    from fastapi.testclient import TestClient

    from circuit_atlas.models.tiny import tiny_language_model
    from circuit_atlas.server import runner
    from circuit_atlas.server.app import create_app
    from circuit_atlas.transcoders.random import random_transcoders

    lm = tiny_language_model("llama", seed=2, n_layers=2, d_model=32)
    tc = random_transcoders("plt", n_layers=2, d_model=32, n_features=16, seed=1)
    lm.save(tmp_path / "model")
    tc.save_native(tmp_path / "tc")
    traced_with = circuit_atlas.load(str(tmp_path / "model"), str(tmp_path / "tc"))
    graphs = tmp_path / "graphs"
    graph = circuit_atlas.attribute(traced_with, "the capital of Texas is", progress=False)
    write_graph_bundle(graph, graphs, "texas")

    captured: dict = {}
    monkeypatch.setattr(runner, "serve", lambda data_dir, **kw: captured.update(kw, data_dir=data_dir))
    monkeypatch.chdir(tmp_path)
    code = main(["serve", "graphs", "--model", "./model/", "--transcoders", "tc", "--no-browser"])
    assert code == 0, capsys.readouterr().err
    held = captured["model"]
    assert held.transcoders.scan == graph.transcoder_scan == "random-plt-relu-seed1"
    assert held.lm.name != graph.model_name  # same folder, spelled differently
    client = TestClient(create_app(graphs, model=held))
    status = client.get("/api/graphs/texas/steer").json()
    assert status["available"] is True, status["reason"]
