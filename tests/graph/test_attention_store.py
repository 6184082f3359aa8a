"""Precomputed attention explanations: what is chosen, the files beside the graph, the graph-JSON
extension (checked against the schema), and refusals of corrupt files."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jsonschema
import pytest
import torch
from safetensors.torch import load_file, save_file

import circuit_atlas
from circuit_atlas.attribution.heads import edge_heads
from circuit_atlas.attribution.qk import qk_attribution
from circuit_atlas.attribution import explain_graph_attention
from circuit_atlas.graph import GraphAttention, GraphFileError, prune, to_graph_json
from circuit_atlas.graph.attention import ATTENTION_JSON, ATTENTION_TENSORS, node_positions
from circuit_atlas.graph.export import SCHEMA_FILE, read_graph_json
from circuit_atlas.models.tiny import tiny_language_model
from circuit_atlas.graph.bundle import write_graph_bundle
from circuit_atlas.transcoders.random import random_transcoders


@pytest.fixture(scope="module")
def traced():
    lm = tiny_language_model("qwen3", seed=3, n_layers=3, d_model=48)
    tc = random_transcoders("clt", n_layers=3, d_model=48, n_features=64, skip=True, seed=5,
                            input_hook="hook_resid_mid", output_hook="hook_mlp_out")
    model = circuit_atlas.load(lm, tc)
    ids = torch.randint(4, lm.vocab_size, (8,), generator=torch.Generator().manual_seed(1))
    ids[0] = model.tokenizer.bos_token_id
    graph = circuit_atlas.attribute(model, ids, progress=False)
    attention = explain_graph_attention(model, graph, max_edges=6, heads_per_edge=2, top_pairs=7,
                                        progress=False)
    return model, graph, attention


def test_strongest_cross_position_edges_are_explained(traced):
    model, graph, attention = traced
    pruned = prune(graph)
    targets, sources, weights = pruned.kept_edges()
    positions = node_positions(graph)
    cross = [(abs(float(w)), graph.node_id(int(s)), graph.node_id(int(t)))
             for t, s, w in zip(targets, sources, weights)
             if positions[t] != positions[s] and pruned.node_mask[t] and pruned.node_mask[s]]
    expected = [(s, t) for _, s, t in sorted(cross, reverse=True)[:6]]
    assert [(e["source"], e["target"]) for e in attention.edges] == expected
    for edge in attention.edges:
        fresh = edge_heads(model, graph, edge["source"], edge["target"]).to_json(top=2)
        assert [(r["layer"], r["head"]) for r in edge["heads"]] == [(r["layer"], r["head"]) for r in fresh["heads"]]
        assert edge["total"] == pytest.approx(edge["edge"], rel=1e-4, abs=1e-6)
        for row in edge["heads"]:
            stored = attention.explanations[row["explanation"]]
            assert stored.key == (row["layer"], row["head"], row["query_position"], row["key_position"])
    stored = max(attention.explanations, key=lambda e: len(e.query_terms) * len(e.key_terms))
    assert stored.meta["layer"] >= 1  # terms from earlier layers, not only token embeddings
    live = qk_attribution(model, graph.input_ids, layer=stored.meta["layer"], head=stored.meta["head"],
                          query_position=stored.meta["query_position"], key_position=stored.meta["key_position"])
    assert stored.meta["score"] == pytest.approx(live.score)
    assert [(p["query_term"], p["key_term"]) for p in stored.top_pairs(7)] == \
        [(p.query_term, p.key_term) for p in live.top_pairs(7)]
    assert float(stored.query_totals.sum()) == pytest.approx(live.score, abs=1e-4)


def test_files_round_trip(traced, tmp_path):
    _, _, attention = traced
    attention.save(tmp_path)
    loaded = GraphAttention.load(tmp_path)
    assert loaded.edges == attention.edges and loaded.hop == attention.hop
    assert loaded.settings == attention.settings and loaded.prompt_tokens == attention.prompt_tokens
    for a, b in zip(loaded.explanations, attention.explanations):
        assert a.meta == b.meta and a.query_terms == b.query_terms
        assert torch.equal(a.pair_index, b.pair_index) and torch.equal(a.pair_value, b.pair_value)
        assert torch.equal(a.values, b.values)
    assert loaded.to_json() == attention.to_json()


def test_graph_json_extension_follows_the_schema(traced, tmp_path):
    _, graph, attention = traced
    schema = json.loads(SCHEMA_FILE.read_text())
    data = to_graph_json(graph, "qk", attention=attention)
    jsonschema.Draft202012Validator(schema).validate(data)
    extension = data["attention"]
    node_ids = {n["node_id"] for n in data["nodes"]}
    assert extension["edges"] and all(e["source"] in node_ids and e["target"] in node_ids
                                      for e in extension["edges"])
    referenced = {r["explanation"] for e in extension["edges"] for r in e["heads"]}
    assert referenced == set(range(len(extension["explanations"])))
    explanation = extension["explanations"][0]
    assert set(explanation["labels"]) >= {explanation["pairs"][0]["query_term"]}
    assert "attention" not in to_graph_json(graph, "qk")
    # with a higher threshold fewer nodes are written: only edges between them stay
    small = to_graph_json(graph, "qk", node_threshold=0.3, edge_threshold=0.5, attention=attention)
    jsonschema.Draft202012Validator(schema).validate(small)
    kept = {n["node_id"] for n in small["nodes"]}
    assert all(e["source"] in kept and e["target"] in kept for e in small["attention"]["edges"])


def test_bundle_keeps_explanations_beside_the_graph(traced, tmp_path):
    _, graph, attention = traced
    folder = write_graph_bundle(graph, tmp_path, "qk", attention=attention)
    assert (folder / ATTENTION_JSON).is_file() and (folder / ATTENTION_TENSORS).is_file()
    assert GraphAttention.load(folder).edges == attention.edges
    document = read_graph_json(folder / "qk.json")
    assert document["attention"]["format"] == "circuit-atlas-attention"


def _corrupt(folder, edit_json=None, edit_tensors=None):
    if edit_json is not None:
        meta = json.loads((folder / ATTENTION_JSON).read_text())
        edit_json(meta)
        (folder / ATTENTION_JSON).write_text(json.dumps(meta))
    if edit_tensors is not None:
        tensors = load_file(str(folder / ATTENTION_TENSORS))
        edit_tensors(tensors)
        save_file(tensors, str(folder / ATTENTION_TENSORS))


@pytest.mark.parametrize("edit_json, edit_tensors, message", [
    (lambda m: m.update(format="other"), None, "not a circuit-atlas attention file"),
    (lambda m: m.update(version=99), None, "has version 99"),
    (lambda m: m.update(edges={}), None, "'edges' must be a list"),
    (lambda m: m["edges"][0]["heads"][0].update(explanation=999), None, "names explanation 999"),
    (lambda m: m["explanations"][0].pop("query_terms"), None, "no valid 'query_terms'"),
    (lambda m: m["explanations"][0].update(layer="x"), None, "lacks an integer 'layer'"),
    (None, lambda t: t.pop("e0.key_totals"), "e0.key_totals is missing"),
    (None, lambda t: t.__setitem__("e0.pair_index", t["e0.pair_index"] + 1000), "do not index"),
    (None, lambda t: t.__setitem__("e0.values", torch.zeros(3, 5)), "e0.values has shape"),
])
def test_corrupt_files_are_refused_naming_them(traced, tmp_path, edit_json, edit_tensors, message):
    _, _, attention = traced
    attention.save(tmp_path)
    _corrupt(tmp_path, edit_json, edit_tensors)
    with pytest.raises(GraphFileError, match=message):
        GraphAttention.load(tmp_path)


def test_a_failed_save_leaves_the_old_files(traced, tmp_path, monkeypatch):
    """Whether the JSON cannot be written or its rename fails after the tensors' rename, the
    folder keeps the old pair: never new tensors beside old explanations."""
    _, _, attention = traced
    attention.save(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    doubled = [dataclasses.replace(e, query_totals=e.query_totals * 2) for e in attention.explanations]
    changed = dataclasses.replace(attention, hop="all", explanations=doubled)
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name == ATTENTION_JSON:
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="rename failed"):
        changed.save(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    monkeypatch.undo()
    back = GraphAttention.load(changed.save(tmp_path))
    assert torch.equal(back.explanations[0].query_totals, doubled[0].query_totals)


def test_missing_or_broken_files(tmp_path):
    with pytest.raises(GraphFileError, match="attention file .* is missing"):
        GraphAttention.load(tmp_path)
    (tmp_path / ATTENTION_JSON).write_text("{not json")
    with pytest.raises(GraphFileError, match="not valid JSON"):
        GraphAttention.load(tmp_path)
    (tmp_path / ATTENTION_JSON).write_text(json.dumps({"format": "circuit-atlas-attention", "version": 1,
                                                       "edges": [], "explanations": []}))
    with pytest.raises(GraphFileError, match="attention tensor file .* is missing"):
        GraphAttention.load(tmp_path)
    (tmp_path / ATTENTION_TENSORS).write_bytes(b"\x08" + b"\x00" * 7 + b"{}")
    with pytest.raises(GraphFileError, match="attention tensor file .* is corrupt"):
        GraphAttention.load(tmp_path)


def test_settings_are_checked(traced):
    model, graph, _ = traced
    with pytest.raises(GraphFileError, match="max_edges must be a positive integer"):
        explain_graph_attention(model, graph, max_edges=0, progress=False)
