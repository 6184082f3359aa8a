"""Annotation storage: merge semantics, validation, concurrency and crash safety."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from circuit_atlas.io import atomic
from circuit_atlas.server.annotations import AnnotationFileError, AnnotationStore
from circuit_atlas.server.app import create_app
from circuit_atlas.server.runner import BackgroundServer


def test_round_trip_and_merge(client, data_dir: Path) -> None:
    empty = client.get("/api/graphs/demo/annotations").json()
    assert empty["node_labels"] == {} and empty["revision"] == 0
    patch = {
        "node_labels": {"0_1_2": "capital city", "1_3_4": "Texas"},
        "feature_labels": {"13": "state names"},
        "supernodes": {"sn-1": {"name": "Texas", "members": ["1_3_4", "0_1_2"]}},
        "pinned_sets": {"main": ["0_1_2", "1_3_4"]},
    }
    first = client.put("/api/graphs/demo/annotations", json=patch)
    assert first.status_code == 200, first.text
    # A second patch touches one key of one section; everything else survives.
    second = client.put(
        "/api/graphs/demo/annotations",
        json={"node_labels": {"0_1_2": None}, "supernodes": {"sn-1": {"name": "TX", "members": ["1_3_4"]}}},
    ).json()
    assert second["node_labels"] == {"1_3_4": "Texas"}
    assert second["feature_labels"] == {"13": "state names"}
    assert second["supernodes"] == {"sn-1": {"name": "TX", "members": ["1_3_4"]}}
    assert second["pinned_sets"] == {"main": ["0_1_2", "1_3_4"]}
    assert second["revision"] == 2
    again = client.get("/api/graphs/demo/annotations").json()
    assert again == second
    on_disk = json.loads((data_dir / "demo" / "demo.annotations.json").read_text())
    assert on_disk["node_labels"] == {"1_3_4": "Texas"}
    # Empty label deletes, like null.
    third = client.put("/api/graphs/demo/annotations", json={"feature_labels": {"13": ""}}).json()
    assert third["feature_labels"] == {}


def test_json_only_graph_gets_annotations_beside_its_file(client, data_dir: Path) -> None:
    response = client.put("/api/graphs/jsonly/annotations", json={"node_labels": {"a": "b"}})
    assert response.status_code == 200
    assert (data_dir / "loose" / "jsonly.annotations.json").is_file()


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"colours": {}}, "colours: unknown field"),
        ({"node_labels": ["x"]}, "node_labels: Input should be a valid dictionary"),
        ({"node_labels": {"x": 3}}, "node_labels.x: Input should be a valid string"),
        ({"node_labels": {"": "empty key"}}, "node_labels[''] (key): String should have at least 1"),
        ({"supernodes": {"s": {"name": "x", "members": []}}}, "supernodes.s.members: List should have at least 1"),
        ({"supernodes": {"s": {"name": "x", "members": [1]}}}, "supernodes.s.members[0]: Input should be a valid string"),
        ({"supernodes": {"s": {"name": "x", "members": ["a"], "extra": 1}}}, "supernodes.s.extra: unknown field"),
        ({"pinned_sets": {"s": "a,b"}}, "pinned_sets.s: Input should be a valid list"),
        ({"node_labels": {"x": "y" * 5000}}, "node_labels.x: String should have at most 2000"),
        ({"node_labels": {"x": "y\ud800"}}, "node_labels.x: Input should be a valid string, unable to parse raw data as a unicode"),
        ([1, 2, 3], "the request body must be a JSON object"),
    ],
)
def test_invalid_patches_are_400(client, patch, message: str) -> None:
    # Sent as ASCII JSON (lone surrogates as \u escapes, as a browser's JSON.stringify does).
    response = client.put("/api/graphs/demo/annotations", content=json.dumps(patch),
                          headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert message in response.json()["detail"]
    assert client.get("/api/graphs/demo/annotations").json()["revision"] == 0


def test_concurrent_store_patches_lose_nothing(tmp_path: Path) -> None:
    store = AnnotationStore()
    path = tmp_path / "g.annotations.json"
    n_threads, per_thread = 8, 10
    barrier = threading.Barrier(n_threads)

    def worker(t: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            store.patch(path, {"node_labels": {f"{t}_{i}_0": f"label {t}/{i}"}})

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    doc = store.read(path)
    assert len(doc["node_labels"]) == n_threads * per_thread
    assert doc["revision"] == n_threads * per_thread


def test_concurrent_http_saves_lose_nothing(data_dir: Path) -> None:
    """Real server, real worker threads: parallel PUTs of different keys all survive."""
    n_threads, per_thread = 6, 8
    with BackgroundServer(create_app(data_dir)) as server:
        url = f"{server.url}api/graphs/demo/annotations"
        barrier = threading.Barrier(n_threads)
        failures: list[str] = []

        def worker(t: int) -> None:
            with httpx.Client(timeout=30) as http:
                barrier.wait()
                for i in range(per_thread):
                    patch = {"supernodes": {f"sn-{t}-{i}": {"name": f"g{t}", "members": [f"{t}_{i}_1"]}}}
                    response = http.put(url, json=patch)
                    if response.status_code != 200:
                        failures.append(response.text)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        final = httpx.get(url).json()
    assert not failures
    assert len(final["supernodes"]) == n_threads * per_thread
    assert final["revision"] == n_threads * per_thread


def test_crash_mid_write_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    store = AnnotationStore()
    path = tmp_path / "g.annotations.json"
    store.patch(path, {"node_labels": {"a": "old"}})
    before = path.read_bytes()

    def torn_write(obj, handle, **kwargs):
        handle.write('{"node_labels": {"a": "ne')  # half a document, then the "crash"
        handle.flush()
        raise OSError("disk full")

    monkeypatch.setattr(atomic, "_dump", torn_write)
    with pytest.raises(OSError, match="disk full"):
        store.patch(path, {"node_labels": {"a": "new"}})
    assert path.read_bytes() == before
    # no temp files (the hidden lock file stays: waiting processes share its inode)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".g.annotations.json.lock",
                                                          "g.annotations.json"]
    monkeypatch.undo()
    assert store.patch(path, {"node_labels": {"b": "later"}})["node_labels"] == {
        "a": "old",
        "b": "later",
    }


def test_crash_during_http_save_is_a_clean_500(data_dir: Path, monkeypatch) -> None:
    client = TestClient(create_app(data_dir), raise_server_exceptions=False)
    client.put("/api/graphs/demo/annotations", json={"node_labels": {"a": "old"}})
    path = data_dir / "demo" / "demo.annotations.json"
    before = path.read_bytes()

    def failing_fsync(fd):
        raise OSError("I/O error")

    monkeypatch.setattr(atomic.os, "fsync", failing_fsync)
    response = client.put("/api/graphs/demo/annotations", json={"node_labels": {"a": "new"}})
    monkeypatch.undo()
    assert response.status_code == 500
    assert "Traceback" not in response.text and "I/O error" in response.json()["detail"]
    assert path.read_bytes() == before


def test_corrupt_annotation_file_is_reported(client, data_dir: Path) -> None:
    (data_dir / "demo" / "demo.annotations.json").write_text("{not json")
    response = client.get("/api/graphs/demo/annotations")
    # the file is at fault, not the request: 422, naming the file relative to the data folder
    assert response.status_code == 422 and "not valid JSON" in response.json()["detail"]
    assert "demo/demo.annotations.json" in response.json()["detail"]
    assert str(data_dir) not in response.json()["detail"]


def test_store_rejects_non_object_files(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text("[1]")
    with pytest.raises(AnnotationFileError, match="JSON object"):
        AnnotationStore().read(path)
