"""Every file of the data folder is untrusted input: graph folders are shared and downloaded.

Whatever a bundle.json, graph file or annotations file holds, the server writes only inside the
data folder and answers with a 2xx or a 4xx naming the file, never a 500.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from circuit_atlas.graph import Graph, to_graph_json, write_graph_bundle
from circuit_atlas.server.annotations import AnnotationFileError, AnnotationStore
from circuit_atlas.server.app import create_app

DEEP = "[" * 100_000 + "]" * 100_000


def _client(data_dir: Path) -> TestClient:
    return TestClient(create_app(data_dir), raise_server_exceptions=False)


def _edit_bundle(data_dir: Path, **fields) -> None:
    path = data_dir / "demo" / "bundle.json"
    info = json.loads(path.read_text())
    info.update(fields)
    path.write_text(json.dumps(info))


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_a_bundle_slug_cannot_send_writes_outside_the_data_folder(tmp_path, data_dir) -> None:
    """The hole: bundle.json's slug named the annotations file, so '../../ESCAPED' made a PUT
    write ESCAPED.annotations.json two folders up."""
    _edit_bundle(data_dir, slug="../../ESCAPED")
    before = _files(tmp_path)
    client = _client(data_dir)
    listing = client.get("/api/graphs").json()["graphs"]
    demo = next(g for g in listing if g["folder"] == "demo")
    assert demo["id"] == "demo" and demo["slug"] == "demo"  # the folder name instead
    assert any("slug" in w and "../../ESCAPED" in w for w in demo["warnings"])
    response = client.put("/api/graphs/demo/annotations", json={"node_labels": {"a": "b"}})
    assert response.status_code == 200, response.text
    created = _files(tmp_path) - before
    assert created == {"data/demo/demo.annotations.json", "data/demo/.demo.annotations.json.lock"}
    assert not list(tmp_path.parent.rglob("ESCAPED*"))


@pytest.mark.parametrize("slug", ["..", "a/b", "x\n", "/etc/passwd", "", "a" * 200, 7, None, "ok.json"])
def test_every_bad_slug_falls_back_to_the_folder_name(data_dir, slug) -> None:
    _edit_bundle(data_dir, slug=slug)
    client = _client(data_dir)
    response = client.put("/api/graphs/demo/annotations", json={"node_labels": {"a": "b"}})
    assert response.status_code == 200, response.text
    assert (data_dir / "demo" / "demo.annotations.json").is_file()
    assert client.get("/api/graphs/demo").status_code == 200


@pytest.mark.parametrize("value", ["abc", None, {}, [0.5], True, 2, -1, "NaN"])
def test_bad_bundle_thresholds_become_the_defaults(data_dir, value) -> None:
    _edit_bundle(data_dir, node_threshold=value, edge_threshold=value)
    client = _client(data_dir)
    demo = next(g for g in client.get("/api/graphs").json()["graphs"] if g["id"] == "demo")
    assert (demo["node_threshold"], demo["edge_threshold"]) == (0.8, 0.98)
    assert len(demo["warnings"]) == 2
    assert client.get("/api/graphs/demo").json()["view"]["node_threshold"] == 0.8


def test_the_annotation_store_never_writes_outside_its_root(tmp_path) -> None:
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    store = AnnotationStore(root)
    for outside in (root / ".." / "x.annotations.json", tmp_path / "y.annotations.json",
                    root / "sub" / ".." / ".." / "z.annotations.json"):
        with pytest.raises(AnnotationFileError, match="not inside the data folder"):
            store.patch(outside, {"node_labels": {"a": "b"}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert store.patch(root / "sub" / "g.annotations.json", {"node_labels": {"a": "b"}})["revision"] == 1


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_a_symlinked_lock_file_is_refused(tmp_path, data_dir) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.symlink(victim, data_dir / "demo" / ".demo.annotations.json.lock")
    response = _client(data_dir).put("/api/graphs/demo/annotations", json={"node_labels": {"a": "b"}})
    assert response.status_code == 422 and "symlink" in response.json()["detail"]
    assert victim.read_text() == "keep me"


def _json_graph(data_dir: Path, graph, text: str | None = None, **node_fields) -> None:
    doc = to_graph_json(graph, "hostile", node_threshold=1.0, edge_threshold=1.0)
    doc["nodes"][0].update(node_fields)
    (data_dir / "hostile.json").write_text(text if text is not None else json.dumps(doc))


@pytest.mark.parametrize(
    "fields, needle",
    [
        ({"influence": "0.5"}, "nodes[0].influence"),
        ({"ctx_idx": "three"}, "nodes[0].ctx_idx"),
        ({"feature": [1]}, "nodes[0].feature"),
        ({"clerp": {"a": 1}}, "nodes[0].clerp"),
        ({"activation": float("nan")}, "nodes[0].activation"),
        ({"influence": float("inf")}, "nodes[0].influence"),
    ],
)
def test_a_graph_file_with_wrong_types_is_422_naming_the_field(data_dir, graph, fields, needle) -> None:
    _json_graph(data_dir, graph, **fields)
    client = _client(data_dir)
    assert client.get("/api/graphs").status_code == 200
    for url in ("/api/graphs/hostile", "/api/graphs/hostile/nodes/x"):
        response = client.get(url)
        assert response.status_code == 422, (url, response.text)
        assert needle in response.json()["detail"] and "hostile.json" in response.json()["detail"]


@pytest.mark.parametrize(
    "text",
    [
        DEEP,
        '{"metadata": ' + DEEP + ', "nodes": [], "links": []}',
        '{"metadata": {"prompt": 1' + "0" * 5000 + '}, "nodes": [], "links": []}',
        '{"metadata": {"prompt": "x"}, "nodes": [{"node_id": "a"}], "links": [{"source": "a"}]}',
        '{"metadata": {"prompt": ["x"], "prompt_tokens": "x", "scan": 3}, "nodes": [], "links": []}',
        '\ufeff{"metadata": {}}',
        "{\"metadata\": {}, \"nodes\": [], \"links\": [], \"qParams\": {\"supernodes\": \"" + "[" * 5000 + "\"}}",
    ],
)
def test_malformed_graph_files_never_give_a_500(data_dir, graph, text) -> None:
    _json_graph(data_dir, graph, text=text)
    client = _client(data_dir)
    listing = client.get("/api/graphs")
    assert listing.status_code == 200
    for entry in listing.json()["graphs"]:
        assert isinstance(entry["prompt"], str) and isinstance(entry["prompt_tokens"], list)
    for url in ("/api/graphs/hostile", "/api/graphs/hostile/nodes/a", "/api/graphs/hostile/annotations"):
        assert client.get(url).status_code < 500, url


def test_deeply_nested_bundle_and_annotation_files_are_handled(data_dir) -> None:
    (data_dir / "demo" / "bundle.json").write_text(DEEP)  # not a bundle.json: graph/ still serves
    client = _client(data_dir)
    assert client.get("/api/graphs").status_code == 200
    assert client.get("/api/graphs/demo").status_code == 200
    (data_dir / "demo" / "demo.annotations.json").write_text(DEEP)
    response = client.get("/api/graphs/demo/annotations")
    assert response.status_code == 422 and "nested too deeply" in response.json()["detail"]
    assert client.put("/api/graphs/demo/annotations", json={"node_labels": {"a": "b"}}).status_code == 422


@pytest.mark.parametrize(
    "stored, needle",
    [
        ({"node_labels": {"a": 1}}, "node_labels"),
        ({"supernodes": {"s": {"name": "x"}}}, "supernodes"),
        ({"supernodes": {"s": {"name": "x", "members": [], "colour": 1}}}, "supernodes"),
        ({"pinned_sets": {"p": "a,b"}}, "pinned_sets"),
        ({"revision": "7"}, "revision"),
        ({"revision": -1}, "revision"),
    ],
)
def test_an_invalid_annotations_file_is_422_and_kept(data_dir, stored, needle) -> None:
    path = data_dir / "demo" / "demo.annotations.json"
    path.write_text(json.dumps(stored))
    client = _client(data_dir)
    for response in (client.get("/api/graphs/demo/annotations"),
                     client.put("/api/graphs/demo/annotations", json={"node_labels": {"a": "b"}}),
                     client.get("/api/graphs/demo/nodes/x")):
        assert response.status_code == 422 and needle in response.json()["detail"], response.text
    assert json.loads(path.read_text()) == stored  # nothing the user wrote is dropped


def test_lone_surrogates_in_files_are_shown_not_crashed_on(data_dir, graph) -> None:
    doc = to_graph_json(graph, "odd", node_threshold=1.0, edge_threshold=1.0)
    doc["metadata"]["prompt"] = "x\ud800y"
    doc["nodes"][0]["clerp"] = "\udfff"
    (data_dir / "odd.json").write_text(json.dumps(doc))  # ASCII JSON: "\ud800" escapes
    (data_dir / "demo" / "demo.annotations.json").write_text('{"node_labels": {"a\\udc80": "b\\ud800"}}')
    os.makedirs(data_dir / os.fsdecode(b"bad\xffname"))
    write_graph_bundle(graph, data_dir / os.fsdecode(b"bad\xffname"), "inner")
    client = _client(data_dir)
    listing = client.get("/api/graphs")
    assert listing.status_code == 200
    listing.content.decode("utf-8")  # strict UTF-8
    odd = next(g for g in listing.json()["graphs"] if g["id"] == "odd")
    assert odd["prompt"] == "x\ufffdy"
    view = client.get("/api/graphs/odd")
    assert view.status_code == 200 and view.json()["nodes"][0]["clerp"] == "\ufffd"
    labels = client.get("/api/graphs/demo/annotations").json()["node_labels"]
    assert labels == {"a\ufffd": "b\ufffd"}
    saved = client.put("/api/graphs/demo/annotations", json={"node_labels": {"c": "d"}})
    assert saved.status_code == 200


def test_a_native_graph_with_nan_activations_is_422_not_500(data_dir, graph) -> None:
    native = data_dir / "demo" / "graph"
    broken = Graph.load(native)
    broken.activation_values[3] = float("nan")
    broken.save(native)
    client = _client(data_dir)
    assert client.get("/api/graphs").status_code == 200
    node_id = f"{broken.node_id(0)}"
    for url in ("/api/graphs/demo", f"/api/graphs/demo/nodes/{node_id}?scope=full",
                "/api/graphs/demo/nodes/x"):
        response = client.get(url)
        assert response.status_code == 422, (url, response.text)
        assert "non-finite" in response.json()["detail"]
        assert "activation_values[3] is nan" in response.json()["detail"]
    assert client.post("/api/graphs/demo/scores", json={}).status_code == 422
    assert client.put("/api/graphs/demo/annotations", json={"node_labels": {"a": "b"}}).status_code == 200
