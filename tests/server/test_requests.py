"""Hostile requests get a 4xx naming the problem, never a 500; every method a path does not
support gets the same 405; error texts never show the data folder's absolute path."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from circuit_atlas.server.app import create_app

DEEP = b"[" * 100_000 + b"]" * 100_000
WRITES = [("PUT", "/api/graphs/demo/annotations"), ("POST", "/api/graphs/demo/subgraph"),
          ("POST", "/api/graphs/demo/scores"), ("POST", "/api/graphs/demo/steer")]


@pytest.fixture()
def strict_client(data_dir) -> TestClient:
    return TestClient(create_app(data_dir), raise_server_exceptions=False)


@pytest.mark.parametrize("method, url", WRITES)
@pytest.mark.parametrize(
    "body, needle",
    [
        (b'{"node_ids": ' + DEEP + b"}", "nested too deeply"),
        (b'{"node_labels": ' + DEEP + b"}", "nested too deeply"),
        (b'{"x": 1' + b"0" * 5000 + b"}", "Exceeds the limit"),
        (b'\xff\xfe{}', "not valid JSON"),
    ],
)
def test_hostile_bodies_are_400(strict_client, method, url, body, needle) -> None:
    response = strict_client.request(method, url, content=body,
                                     headers={"content-type": "application/json"})
    assert response.status_code == 400, (method, url, response.text)
    assert needle in response.json()["detail"]
    # the connection and the server stay usable
    assert strict_client.get("/api/graphs/demo/annotations").json()["revision"] == 0


@pytest.mark.parametrize("url", ["/api/graphs/demo/subgraph", "/api/graphs/demo/scores"])
def test_lone_surrogates_in_node_ids_are_400(strict_client, url) -> None:
    response = strict_client.post(url, content=b'{"node_ids": ["x\\udfff"]}',
                                  headers={"content-type": "application/json"})
    assert response.status_code == 400 and "node_ids[0]" in response.json()["detail"]


UNSUPPORTED = [
    ("POST", "/api/health"), ("DELETE", "/api/graphs"), ("POST", "/api/graphs/demo"),
    ("PATCH", "/api/graphs/demo/annotations"), ("DELETE", "/api/graphs/demo/annotations"),
    ("GET", "/api/graphs/demo/scores"), ("PUT", "/api/graphs/demo/subgraph"),
    ("PUT", "/api/graphs/demo/steer"), ("POST", "/api/steer"), ("DELETE", "/api/features/0/1"),
    ("OPTIONS", "/api/graphs"), ("TRACE", "/api/graphs/demo/nodes/x"), ("POST", "/"),
]


@pytest.mark.parametrize("method, url", UNSUPPORTED)
@pytest.mark.parametrize("headers, content", [({}, None),
                                              ({"content-type": "text/plain"}, b"x"),
                                              ({"content-type": "application/json"}, b"{}"),
                                              ({"content-type": "text/plain"}, b"x" * 3_000_000)])
def test_unsupported_methods_are_405_whatever_the_body(strict_client, method, url, headers, content) -> None:
    """The content-type (415) and size (413) checks used to answer before the router, so the
    same unsupported method got 405, 413 or 415 depending on its body."""
    response = strict_client.request(method, url, headers=headers, content=content)
    assert response.status_code == 405, (method, url, response.status_code)
    assert response.json() == {"detail": "Method Not Allowed"}
    assert response.headers["allow"]


def test_supported_methods_still_check_the_body(strict_client) -> None:
    url = "/api/graphs/demo/annotations"
    assert strict_client.put(url, content=b"x", headers={"content-type": "text/plain"}).status_code == 415
    big = b'{"node_labels": {"a": "' + b"x" * 3_000_000 + b'"}}'
    assert strict_client.put(url, content=big, headers={"content-type": "application/json"}).status_code == 413


def test_error_texts_never_show_the_data_folder(strict_client, data_dir) -> None:
    (data_dir / "broken.json").write_text('{"metadata": {}, "nodes": [1], "links": []}')
    (data_dir / "demo" / "demo.annotations.json").write_text("{oops")
    answers = [strict_client.get("/api/graphs/nope"), strict_client.get("/api/graphs/broken"),
               strict_client.get("/api/graphs/demo/annotations"), strict_client.get("/api/graphs")]
    for response in answers:
        assert str(data_dir) not in response.text and str(data_dir.parent) not in response.text
    assert answers[0].json()["detail"] == "no graph with id 'nope' in the data folder"
    assert "broken.json" in answers[1].json()["detail"]
    assert "demo/demo.annotations.json" in answers[2].json()["detail"]
