"""Graph: validation, node indexing, dense layout, save/load."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from circuit_atlas.errors import CircuitAtlasError, ShapeMismatchError
from circuit_atlas.graph import Graph, GraphFileError, random_graph
from circuit_atlas.graph import graph as graph_module
from circuit_atlas.io import atomic


@pytest.fixture
def graph() -> Graph:
    return random_graph(n_layers=3, n_pos=5, n_sel=18, n_logits=3, seed=3, n_custom_targets=1)


def test_sizes_and_ranges_partition_the_dense_order(graph: Graph) -> None:
    L, P = graph.n_layers, graph.n_positions
    assert graph.n_nodes == graph.n_selected + (L + 1) * P + graph.n_logits
    ranges = [graph.feature_range, graph.error_range, graph.token_range, graph.logit_range]
    flat = [i for r in ranges for i in r]
    assert flat == list(range(graph.n_nodes))
    assert graph.error_index(2, 4) == graph.n_selected + 2 * P + 4
    assert graph.token_index(1) == graph.n_selected + L * P + 1
    assert graph.logit_index(0) == graph.n_nodes - graph.n_logits
    kinds = [graph.node_kind(i) for i in range(graph.n_nodes)]
    assert kinds == (["feature"] * graph.n_selected + ["error"] * (L * P) + ["token"] * P
                     + ["logit"] * graph.n_logits)
    with pytest.raises(IndexError):
        graph.node_kind(graph.n_nodes)


def test_node_ids_follow_graph_json_conventions(graph: Graph) -> None:
    ids = graph.node_ids()
    assert len(set(ids)) == len(ids)
    layer, pos, feat = graph.active_features[graph.selected_features[0]].tolist()
    assert ids[0] == f"{layer}_{feat}_{pos}"
    assert ids[graph.error_index(1, 3)] == "1_-1_3"
    assert ids[graph.token_index(2)] == f"E_{int(graph.input_ids[2])}_2"
    last = graph.logit_index(graph.n_logits - 1)
    assert ids[last] == f"{graph.n_layers + 1}_{int(graph.logit_token_ids[-1])}_{graph.n_positions - 1}"
    assert graph.is_virtual_logit(graph.n_logits - 1) and not graph.is_virtual_logit(0)
    for i, node_id in enumerate(ids):
        assert graph.node_index(node_id) == i
    # the legacy error form is accepted where it is not a feature id
    legacy = "0_2_4"
    if legacy not in ids:
        assert graph.node_index(legacy) == graph.error_index(2, 4)
    with pytest.raises(KeyError):
        graph.node_index("nonsense")
    assert "logit" in graph.node_label(last) and "error L1 @3" in graph.node_label(graph.error_index(1, 3))


def test_dense_adjacency_layout(graph: Graph) -> None:
    dense = graph.dense_adjacency()
    n = graph.n_nodes
    assert dense.shape == (n, n) and dense.dtype == torch.float32
    e0, t1 = graph.error_range.start, graph.token_range.stop
    assert not dense[e0:t1].any(), "error and token rows must be zero"
    assert not dense[:, graph.logit_range.start :].any(), "logit columns must be zero"
    # every stored entry is at its dense place, and nothing else is non-zero
    for r in range(graph.n_targets):
        assert torch.equal(dense[int(graph.dense_rows[r]), : graph.n_sources], graph.adjacency[r])
    assert int((dense != 0).sum()) == int((graph.adjacency != 0).sum())
    for node in range(n):
        row = graph.storage_row(node)
        if row is None:
            assert graph.node_kind(node) in ("error", "token")
        else:
            assert int(graph.dense_rows[row]) == node


def test_save_load_round_trip_is_exact(graph: Graph, tmp_path) -> None:
    graph.save(tmp_path / "g")
    loaded = Graph.load(tmp_path / "g")
    assert loaded == graph
    for name in ("adjacency", "activation_values", "logit_probabilities", "error_norms"):
        a, b = getattr(graph, name), getattr(loaded, name)
        assert a.dtype == b.dtype and torch.equal(a.view(torch.int32), b.view(torch.int32))
    assert loaded.settings == graph.settings and loaded.tokens == graph.tokens
    assert json.loads((tmp_path / "g" / "graph.json").read_text())["format_version"] == 1


def test_round_trip_without_error_norms_and_with_scan_list(graph: Graph, tmp_path) -> None:
    other = dataclasses.replace(graph, error_norms=None, transcoder_scan=["a/b", "a/c", "a/d"],
                                transcoder_kind="plt", settings={"t": (1, 2), "x": None})
    assert other.settings == {"t": [1, 2], "x": None}  # stored in JSON form
    other.save(tmp_path / "g2")
    loaded = Graph.load(tmp_path / "g2")
    assert loaded == other and loaded.error_norms is None
    assert loaded != graph


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "graph.json").unlink(), "graph.json is missing"),
        (lambda d: (d / "graph.safetensors").unlink(), "graph.safetensors is missing"),
        (lambda d: (d / "graph.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "graph.json").write_text('{"format": "other"}'), "not a circuit-atlas graph"),
        (lambda d: (d / "graph.safetensors").write_bytes(b"\x00" * 5), "corrupt"),
    ],
)
def test_load_reports_damaged_files(graph: Graph, tmp_path, damage, message) -> None:
    directory = graph.save(tmp_path / "g")
    damage(directory)
    with pytest.raises(GraphFileError, match=message):
        Graph.load(directory)


def test_load_reports_newer_version_and_inconsistent_files(graph: Graph, tmp_path) -> None:
    directory = graph.save(tmp_path / "g")
    meta = json.loads((directory / "graph.json").read_text())
    meta["format_version"] = 99
    (directory / "graph.json").write_text(json.dumps(meta))
    with pytest.raises(GraphFileError, match="format_version 99"):
        Graph.load(directory)
    meta["format_version"] = 1
    meta["tokens"] = meta["tokens"][:-1]
    (directory / "graph.json").write_text(json.dumps(meta))
    with pytest.raises(GraphFileError, match="tokens"):
        Graph.load(directory)
    del meta["model_name"]
    (directory / "graph.json").write_text(json.dumps(meta))
    with pytest.raises(GraphFileError, match="model_name"):
        Graph.load(directory)


def test_load_missing_directory_and_file_instead_of_directory(tmp_path) -> None:
    with pytest.raises(GraphFileError, match="does not exist"):
        Graph.load(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(GraphFileError, match="not a graph directory"):
        Graph.load(tmp_path / "file")
    assert issubclass(GraphFileError, CircuitAtlasError)


def test_validation_names_the_bad_field(graph: Graph) -> None:
    with pytest.raises(ShapeMismatchError, match="adjacency"):
        dataclasses.replace(graph, adjacency=graph.adjacency[:, :-1])
    with pytest.raises(ShapeMismatchError, match="active_features must be strictly sorted"):
        dataclasses.replace(graph, active_features=graph.active_features.flip(0))
    with pytest.raises(ShapeMismatchError, match="selected_features must be strictly ascending"):
        dataclasses.replace(graph, selected_features=graph.selected_features.flip(0))
    with pytest.raises(ShapeMismatchError, match="tokens"):
        dataclasses.replace(graph, tokens=graph.tokens[:-1])
    with pytest.raises(ShapeMismatchError, match="logit"):
        dataclasses.replace(graph, logit_tokens=graph.logit_tokens[:-1])
    with pytest.raises(ShapeMismatchError, match="layer"):
        dataclasses.replace(graph, n_layers=1)
    with pytest.raises(ShapeMismatchError, match="NaN"):
        bad = graph.adjacency.clone()
        bad[0, 0] = float("nan")
        dataclasses.replace(graph, adjacency=bad)
    with pytest.raises(ShapeMismatchError, match="JSON"):
        dataclasses.replace(graph, settings={"x": object()})
    with pytest.raises(ShapeMismatchError, match="integer"):
        dataclasses.replace(graph, input_ids=graph.input_ids.float())


def test_inputs_are_coerced_to_cpu_tensors_of_the_documented_dtypes(graph: Graph) -> None:
    other = dataclasses.replace(
        graph,
        input_ids=graph.input_ids.int().tolist(),
        adjacency=graph.adjacency.double(),
        logit_probabilities=graph.logit_probabilities.tolist(),
    )
    assert other.input_ids.dtype == torch.int64 and other.adjacency.dtype == torch.float32
    assert other == graph


def test_a_failed_save_leaves_no_temp_files(graph: Graph, tmp_path) -> None:
    import dataclasses

    graph.save(tmp_path / "g")
    before = {p.name: p.read_bytes() for p in (tmp_path / "g").iterdir()}
    unserialisable = dataclasses.replace(graph)
    object.__setattr__(unserialisable, "settings", {"when": object()})
    with pytest.raises(TypeError):
        unserialisable.save(tmp_path / "g")
    assert {p.name: p.read_bytes() for p in (tmp_path / "g").iterdir()} == before


def _files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _another(graph: Graph) -> Graph:
    return random_graph(n_layers=3, n_pos=6, n_sel=20, n_logits=3, seed=9)


def test_a_save_that_fails_midway_through_the_tensors_leaves_the_old_graph(graph, tmp_path,
                                                                          monkeypatch) -> None:
    folder = graph.save(tmp_path / "g")
    before = _files(folder)

    def torn_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"\x00" * 100)  # part of a file, then the "crash"
        raise OSError("disk full")

    monkeypatch.setattr(graph_module, "save_file", torn_save_file)
    with pytest.raises(OSError, match="disk full"):
        _another(graph).save(folder)
    assert _files(folder) == before
    assert Graph.load(folder) == graph


def test_a_failed_rename_of_the_metadata_puts_the_old_tensors_back(graph, tmp_path,
                                                                   monkeypatch) -> None:
    """The tensors are renamed first: when the metadata's rename then fails, the old tensors
    come back, so the folder never pairs new tensors with old metadata."""
    folder = graph.save(tmp_path / "g")
    before = _files(folder)
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name == "graph.json":
            raise OSError("no space left for the rename")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OSError, match="no space"):
        _another(graph).save(folder)
    assert _files(folder) == before
    monkeypatch.undo()
    assert Graph.load(_another(graph).save(folder)) == _another(graph)


def test_save_syncs_each_file_to_disk_before_renaming_it(graph, tmp_path, monkeypatch) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_open = os.fsync, os.replace, os.open
    opened: dict[int, str] = {}

    def tracked_open(path, flags, *args):
        fd = real_open(path, flags, *args)
        opened[fd] = str(path)
        return fd

    def fsync(fd):
        events.append(("fsync", opened.get(fd, "?")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src)))
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "open", tracked_open)
    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    graph.save(tmp_path / "g")
    renamed = [name for kind, name in events if kind == "replace"]
    assert len(renamed) == 2
    for name in renamed:
        assert events.index(("fsync", name)) < events.index(("replace", name))
    assert events[-1] == ("fsync", str(tmp_path / "g"))  # the renames themselves are durable


def test_saved_files_get_the_mode_of_any_new_file(graph, tmp_path) -> None:
    """Not the 0600 of a private temp file: graph folders are shared and served."""
    plain = tmp_path / "plain"
    plain.write_text("")
    folder = graph.save(tmp_path / "g")
    for name in ("graph.json", "graph.safetensors"):
        assert (folder / name).stat().st_mode == plain.stat().st_mode


def test_first_non_finite_names_the_place(graph: Graph) -> None:
    import dataclasses

    assert graph.first_non_finite() is None
    broken = dataclasses.replace(graph, adjacency=graph.adjacency.clone())
    broken.adjacency[2, 3] = float("-inf")
    assert broken.first_non_finite() == "adjacency[2, 3] is -inf"
    values = graph.activation_values.clone()
    values[1] = float("nan")
    layer, position, feature = (int(v) for v in graph.active_features[1])
    assert dataclasses.replace(graph, activation_values=values).first_non_finite() == (
        f"activation_values[1] is nan (layer {layer}, position {position}, feature {feature})")
