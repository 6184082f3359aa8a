"""Per-head edges: the heads' weights sum to the graph's edge, and each head's weight is what
switching off its pattern entries removes from the edge in the frozen replacement model.

The independent side (`FrozenProbe`, no autograd) adds the source's vector to a frozen pass whose
attention patterns are the clean ones with chosen entries set to zero, and reads the change in the
target's readout.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import circuit_atlas
from circuit_atlas.attribution.heads import HeadAttributor, edge_heads
from circuit_atlas.errors import AttentionError, CircuitAtlasError
from circuit_atlas.models.tiny import tiny_language_model
from circuit_atlas.transcoders.random import random_transcoders

from .conftest import FrozenProbe
from .test_edges import _source_perturbation, _target_readout

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "gemma3_multimodal", "gpt2"]
HOOKS = {"plt": ("mlp.hook_in", "mlp.hook_out"), "clt": ("hook_resid_mid", "hook_mlp_out")}


def build(family: str, kind: str, seed: int = 5):
    lm = tiny_language_model(family, seed=3, n_layers=3, d_model=48)
    tc = random_transcoders(kind, n_layers=3, d_model=48, n_features=64, skip=True, seed=seed,
                            input_hook=HOOKS[kind][0], output_hook=HOOKS[kind][1])
    return circuit_atlas.load(lm, tc)


def traced(family: str, kind: str):
    model = build(family, kind)
    ids = torch.randint(4, model.lm.vocab_size, (7,), generator=torch.Generator().manual_seed(0))
    ids[0] = model.tokenizer.bos_token_id
    return model, circuit_atlas.attribute(model, ids, progress=False)


def strongest_edges(graph, per_row: int = 1, *, same_position: bool | None = None, rows: int = 12):
    """(source id, target id) of the strongest edges of `rows` rows (the logits and the features
    with the largest rows): `per_row` of each source kind (feature, error, token) per row."""
    picks = []
    strength = graph.adjacency.abs().sum(1)
    strength[graph.n_selected:] = float("inf")  # logit rows first
    for row in torch.argsort(strength, descending=True)[:rows].tolist():
        target = int(graph.dense_rows[row])
        target_pos = _position(graph, target)
        values = graph.adjacency[row]
        order = torch.argsort(values.abs(), descending=True).tolist()
        for kind in ("feature", "error", "token"):
            chosen = [c for c in order if values[c] != 0 and graph.node_kind(c) == kind and (
                same_position is None or (_position(graph, c) == target_pos) == same_position)]
            picks += [(graph.node_id(c), graph.node_id(target)) for c in chosen[:per_row]]
    return picks


def _position(graph, node: int) -> int:
    kind = graph.node_kind(node)
    if kind == "feature":
        return int(graph.feature_coords[node, 1])
    if kind == "error":
        return (node - graph.n_selected) % graph.n_positions
    if kind == "token":
        return node - graph.token_range.start
    return graph.n_positions - 1


@pytest.mark.parametrize("family", FAMILIES)
def test_heads_sum_to_the_graph_edge(family):
    kind = "plt" if family in ("gemma2", "qwen2", "gpt2", "mistral") else "clt"
    model, graph = traced(family, kind)
    attributor = HeadAttributor(model, graph)
    edges = strongest_edges(graph)
    kinds = {graph.node_kind(graph.node_index(s)) for s, _ in edges}
    assert kinds == {"feature", "error", "token"}
    assert {graph.node_kind(graph.node_index(t)) for _, t in edges} == {"feature", "logit"}
    worst = 0.0
    for source, target in edges:
        for hop in ("last", "first"):
            heads = attributor.edge_heads(source, target, hop=hop)
            assert sum(row.weight for row in heads) + heads.residual == pytest.approx(heads.total, abs=1e-6)
            # relative to the edge, with a floor for edges near float32 noise
            error = abs(heads.total - heads.edge) / max(abs(heads.edge), 1e-2)
            worst = max(worst, error)
            assert error <= 1e-4, (source, target, hop, heads.total, heads.edge)
            if not heads.same_position:
                assert heads.residual == 0.0
    assert worst > 0.0 or len(edges) == 0


class _Ablation:
    """Edges of the frozen model with chosen pattern entries switched off (no autograd)."""

    def __init__(self, model, graph):
        self.model, self.graph = model, graph
        self.run = model.run(graph.input_ids)

    def edge(self, source: str, target: str, zero=lambda patterns: None) -> float:
        graph, model = self.graph, self.model
        patterns = {l: p.clone() for l, p in self.run.record.attention_patterns.items()}
        zero(patterns)
        run = dataclasses.replace(self.run, record=dataclasses.replace(self.run.record,
                                                                       attention_patterns=patterns))
        probe = FrozenProbe(model, run)
        column, row = graph.node_index(source), graph.storage_row(graph.node_index(target))
        embedding_delta, output_deltas = _source_perturbation(graph, run, model, column)
        base = _target_readout(graph, model, row, probe.record())
        moved = _target_readout(graph, model, row, probe.record(embedding_delta, output_deltas))
        return moved - base


def test_each_head_weight_is_what_its_pattern_entries_carry():
    """last hop: zeroing A[l, h, target pos, k ≠ target pos] removes exactly the paths assigned
    to (l, h); first hop: zeroing A[l, h, q ≠ source pos, source pos]."""
    model, graph = traced("llama", "clt")
    ablation = _Ablation(model, graph)
    attributor = HeadAttributor(model, graph)
    checked = 0
    for source, target in strongest_edges(graph, per_row=1, same_position=False)[:12]:
        for hop in ("last", "first"):
            heads = attributor.edge_heads(source, target, hop=hop)
            full = ablation.edge(source, target)
            for row in heads.top(2):
                t, s = heads.target_position, heads.source_position

                def zero(patterns, layer=row.layer, head=row.head):
                    if hop == "last":
                        keep = patterns[layer][0, head, t, t].clone()
                        patterns[layer][0, head, t, :] = 0
                        patterns[layer][0, head, t, t] = keep
                    else:
                        keep = patterns[layer][0, head, s, s].clone()
                        patterns[layer][0, head, :, s] = 0
                        patterns[layer][0, head, s, s] = keep

                removed = full - ablation.edge(source, target, zero)
                assert removed == pytest.approx(row.weight, abs=1e-4 * max(1.0, abs(heads.edge))), \
                    (source, target, hop, row)
                checked += 1
    assert checked >= 10


def test_same_position_edges_split_into_residual_and_self_attention():
    model, graph = traced("gemma2", "plt")
    ablation = _Ablation(model, graph)
    attributor = HeadAttributor(model, graph)
    edges = strongest_edges(graph, per_row=1, same_position=True)[:6]
    assert edges
    for source, target in edges:
        heads = attributor.edge_heads(source, target, hop="last")
        assert heads.same_position
        no_attention = ablation.edge(source, target, lambda patterns: [p.zero_() for p in patterns.values()])
        assert heads.residual == pytest.approx(no_attention, abs=1e-4 * max(1.0, abs(heads.edge)))
        for row in heads.top(2):
            assert row.query_position == row.key_position == heads.source_position

            def later_off(patterns, layer=row.layer):
                for l, p in patterns.items():
                    if l > layer:
                        p.zero_()

            def later_off_and_self(patterns, layer=row.layer, head=row.head):
                later_off(patterns)
                patterns[layer][0, head, heads.source_position, heads.source_position] = 0

            removed = ablation.edge(source, target, later_off) - ablation.edge(source, target, later_off_and_self)
            assert removed == pytest.approx(row.weight, abs=1e-4 * max(1.0, abs(heads.edge)))


def test_table_views_and_json():
    model, graph = traced("qwen3", "clt")
    source, target = strongest_edges(graph, per_row=1, same_position=False)[0]
    heads = edge_heads(model, graph, source, target)
    assert [abs(r.weight) for r in heads] == sorted((abs(r.weight) for r in heads), reverse=True)
    top = heads[0]
    assert heads.head(top.layer, top.head) == pytest.approx(top.weight)
    assert sum(w for _, w in heads.by_position(top.layer, top.head)) == pytest.approx(top.weight, abs=1e-6)
    assert top.query_position == heads.target_position
    data = heads.to_json(top=3)
    assert data["source"] == source and data["target"] == target and len(data["heads"]) <= 3
    assert set(data["heads"][0]) == {"layer", "head", "weight", "query_position", "key_position"}
    assert source in str(heads)


def test_bad_input_is_named():
    model, graph = traced("llama", "plt")
    source, target = strongest_edges(graph, per_row=1, same_position=False)[0]
    attributor = HeadAttributor(model, graph)
    with pytest.raises(AttentionError, match="'9_9_9' is not a node of this graph"):
        attributor.edge_heads("9_9_9", target)
    with pytest.raises(AttentionError, match="source .* is a logit node"):
        attributor.edge_heads(graph.node_id(graph.logit_range.start), target)
    with pytest.raises(AttentionError, match="target .* is a token node"):
        attributor.edge_heads(source, graph.node_id(graph.token_range.start))
    with pytest.raises(AttentionError, match="hop must be one of"):
        attributor.edge_heads(source, target, hop="middle")
    heads = attributor.edge_heads(source, target)
    with pytest.raises(AttentionError, match="layer 7 is outside 0..2"):
        heads.head(7, 0)
    with pytest.raises(AttentionError, match="head 9 is outside 0..3"):
        heads.by_position(0, 9)


def test_a_graph_of_another_model_is_refused():
    model, graph = traced("llama", "plt")
    source, target = strongest_edges(graph, per_row=1)[0]
    other = build("llama", "plt", seed=11)  # same names and shapes, other transcoders
    with pytest.raises(AttentionError, match="traced with another model or transcoders"):
        edge_heads(other, graph, source, target)
    deeper = circuit_atlas.load(tiny_language_model("llama", seed=3, n_layers=2, d_model=48),
                                random_transcoders("plt", n_layers=2, d_model=48, n_features=64, seed=5))
    with pytest.raises(CircuitAtlasError, match="the graph has 3 layers but model"):
        edge_heads(deeper, graph, source, target)
