"""The server never serves files outside its folders and answers bad requests with a 4xx."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from circuit_atlas.server.app import LOOPBACK_HOSTS, create_app
from circuit_atlas.graph.bundle import write_graph_bundle

SECRET = "TOP-SECRET-CONTENT"

TRAVERSALS = [
    "/static/../../../../etc/passwd",
    "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/static/%2e%2e%2f%2e%2e%2fsecret.txt",
    "/static/..%2f..%2f..%2fsecret.txt",
    "/static/%252e%252e/%252e%252e/secret.txt",
    "/static/....//....//secret.txt",
    "/static/js/../../../secret.txt",
    "/api/graphs/..%2F..%2Fsecret.txt",
    "/api/graphs/%2e%2e",
    "/api/graphs/%2e%2e/annotations",
    "/api/graphs/..%2Fsecret/nodes/x",
    "/api/graphs/demo/..%2F..%2Fsecret.txt",
    "/api/graphs/%2E%2E%5C%2E%2E%5Csecret.txt",
    "/../secret.txt",
    "/%2e%2e/secret.txt",
]


@pytest.fixture()
def guarded(tmp_path: Path, data_dir: Path) -> TestClient:
    (data_dir.parent / "secret.txt").write_text(SECRET)
    return TestClient(create_app(data_dir))


@pytest.mark.parametrize("url", TRAVERSALS)
def test_path_traversal_is_refused(guarded: TestClient, url: str) -> None:
    response = guarded.get(url)
    assert 400 <= response.status_code < 500, (url, response.status_code)
    assert SECRET not in response.text
    assert "root:" not in response.text


def test_traversal_cannot_write_annotations_outside(guarded: TestClient, data_dir: Path) -> None:
    for graph_id in ("..%2F..%2Fevil", "%2e%2e", "..", "demo%2F..%2F..%2Fevil"):
        response = guarded.put(f"/api/graphs/{graph_id}/annotations", json={"node_labels": {"a": "b"}})
        assert 400 <= response.status_code < 500
    assert not list(data_dir.parent.glob("*.annotations.json"))
    assert not list(data_dir.parent.glob("evil*"))


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlinked_annotation_file_is_not_followed(tmp_path: Path, data_dir: Path) -> None:
    target = tmp_path / "victim.json"
    target.write_text('{"keep": "me"}')
    os.symlink(target, data_dir / "demo" / "demo.annotations.json")
    client = TestClient(create_app(data_dir))
    # the data folder is at fault, not the request: 422 (as for any unusable file in it)
    assert client.get("/api/graphs/demo/annotations").status_code == 422
    assert client.put("/api/graphs/demo/annotations", json={"node_labels": {"a": "b"}}).status_code == 422
    assert json.loads(target.read_text()) == {"keep": "me"}


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlinked_graph_outside_is_not_served(tmp_path: Path, data_dir: Path, graph) -> None:
    write_graph_bundle(graph, tmp_path / "elsewhere", "private")
    os.symlink(tmp_path / "elsewhere" / "private", data_dir / "private")
    client = TestClient(create_app(data_dir))
    assert "private" not in {g["id"] for g in client.get("/api/graphs").json()["graphs"]}
    assert client.get("/api/graphs/private").status_code == 404


def test_oversized_body_is_413(data_dir: Path) -> None:
    client = TestClient(create_app(data_dir, max_body_bytes=10_000))
    big = {"node_labels": {f"n{i}": "x" * 100 for i in range(200)}}
    response = client.put("/api/graphs/demo/annotations", json=big)
    assert response.status_code == 413 and "limit" in response.json()["detail"]

    def chunks():  # no Content-Length: the streamed body is counted instead
        for _ in range(30):
            yield b" " * 1000

    streamed = client.put(
        "/api/graphs/demo/annotations",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert streamed.status_code == 413
    assert client.get("/api/graphs/demo/annotations").json()["revision"] == 0


@pytest.mark.parametrize(
    "body",
    [b"{", b"{'single': 'quotes'}", b"\xff\xfe\x00", b"", b"null", b"[1,2", b'{"node_labels": NaN}'],
)
def test_malformed_json_is_4xx(client: TestClient, body: bytes) -> None:
    for method, url in (("PUT", "/api/graphs/demo/annotations"), ("POST", "/api/graphs/demo/subgraph")):
        response = client.request(method, url, content=body, headers={"content-type": "application/json"})
        assert 400 <= response.status_code < 500, (method, body, response.status_code)
        assert response.json()["detail"]


def test_writes_must_be_json(client: TestClient) -> None:
    response = client.put(
        "/api/graphs/demo/annotations",
        content=b'{"node_labels": {"a": "b"}}',
        headers={"content-type": "text/plain"},
    )
    assert response.status_code == 415
    form = client.post("/api/graphs/demo/scores", data={"node_ids": "x"})
    assert form.status_code == 415


def test_foreign_host_header_is_refused(data_dir: Path) -> None:
    client = TestClient(create_app(data_dir, allowed_hosts=LOOPBACK_HOSTS), base_url="http://127.0.0.1:8041")
    assert client.get("/api/graphs").status_code == 200
    assert client.get("/api/graphs", headers={"host": "localhost:8041"}).status_code == 200
    assert client.get("/api/graphs", headers={"host": "evil.example:8041"}).status_code == 400
    # The IPv6 loopback with a port is a loopback name; other addresses and names are not.
    assert client.get("/api/graphs", headers={"host": "[::1]:8041"}).status_code == 200
    assert client.get("/api/graphs", headers={"host": "[::1]"}).status_code == 200
    assert client.get("/api/graphs", headers={"host": "[::2]:8041"}).status_code == 400
    assert client.get("/api/graphs", headers={"host": "127.0.0.1.evil.example"}).status_code == 400
    assert client.get("/api/graphs", headers={"host": ""}).status_code == 400
    for junk in ("[::1]evil.example", "[::1].evil.example:80", "127.0.0.1:x", "localhost:80:80"):
        assert client.get("/api/graphs", headers={"host": junk}).status_code == 400, junk


def test_unreadable_graph_file_is_422_not_500(data_dir: Path) -> None:
    (data_dir / "broken.json").write_text('{"metadata": {}, "nodes": [1, 2], "links": []}')
    client = TestClient(create_app(data_dir), raise_server_exceptions=False)
    response = client.get("/api/graphs/broken")
    assert response.status_code == 422 and "broken.json" in response.json()["detail"]
