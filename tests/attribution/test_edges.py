"""Every edge equals the direct effect in the frozen replacement model, computed independently.

The independent computation adds a source's vector (activation × decoder row at each layer it
writes to, an error vector, or a token embedding) to a forward pass with replayed attention
patterns and norm scales and held MLP outputs, and reads the change in the target's readout.
No autograd is involved, so an error in the engine's gradients or contractions shows up here.
"""

from __future__ import annotations

import pytest
import torch

import circuit_atlas
from circuit_atlas.attribution import LogitDifference

from .conftest import FrozenProbe, build_model, prompt_ids

TOLERANCE = 1e-4


def _relative_close(actual: float, expected: float, scale: float) -> bool:
    return abs(actual - expected) <= TOLERANCE * max(1.0, abs(expected), scale)


def _source_perturbation(graph, run, model, column):
    """(embedding_delta, output_deltas) that adds the source of adjacency column `column`."""
    n_sel = graph.selected_features.shape[0]
    L, P = graph.n_layers, len(graph.tokens)
    d = model.d_model
    device = run.errors.device  # the model's device (CIRCUIT_ATLAS_TEST_DEVICE)
    if column < n_sel:
        layer, pos, feature = graph.active_features[graph.selected_features[column]].tolist()
        activation = float(graph.activation_values[graph.selected_features[column]])
        deltas = {}
        for target_layer in model.transcoders.target_layers(layer):
            row = model.transcoders.decoder_rows(layer, torch.tensor([feature]), target_layer)[0]
            delta = torch.zeros(P, d, device=device)
            delta[pos] = activation * row.to(device)
            deltas[target_layer] = delta
        return None, deltas
    column -= n_sel
    if column < L * P:
        layer, pos = divmod(column, P)
        delta = torch.zeros(P, d, device=device)
        delta[pos] = run.errors[layer, pos]
        return None, {layer: delta}
    pos = column - L * P
    delta = torch.zeros(P, d, device=device)
    delta[pos] = run.token_vectors[pos]
    return delta, None


def _target_readout(graph, model, row, record):
    n_sel = graph.selected_features.shape[0]
    if row < n_sel:
        layer, pos, feature = graph.active_features[graph.selected_features[row]].tolist()
        return FrozenProbe.feature_readout(record, model.transcoders, layer, pos, feature)
    token = int(graph.logit_token_ids[row - n_sel])
    w_u = model.lm.unembedding.detach().float()
    return FrozenProbe.logit_readout(record, w_u[token] - w_u.mean(0))


def _sample_edges(graph, generator, per_kind=6):
    """Random (row, column) pairs covering feature/error/token sources and feature/logit targets."""
    n_sel = graph.selected_features.shape[0]
    n_rows, n_cols = graph.adjacency.shape
    L, P = graph.n_layers, len(graph.tokens)
    nonzero = torch.nonzero(graph.adjacency[:n_sel, :n_sel])  # feature -> feature with an effect
    picks = [tuple(nonzero[i].tolist()) for i in torch.randperm(len(nonzero), generator=generator)[:per_kind]]
    feature_rows = torch.randint(0, n_sel, (per_kind * 3,), generator=generator).tolist()
    for i, row in enumerate(feature_rows):
        kind = i % 3
        if kind == 0:
            picks.append((row, int(torch.randint(0, n_sel, (1,), generator=generator))))
        elif kind == 1:
            picks.append((row, n_sel + int(torch.randint(0, L * P, (1,), generator=generator))))
        else:
            picks.append((row, n_sel + L * P + int(torch.randint(0, P, (1,), generator=generator))))
    for row in range(n_sel, n_rows):
        for column in torch.randint(0, n_cols, (per_kind,), generator=generator).tolist():
            picks.append((row, column))
    return picks


def test_sampled_edges_match_direct_effects(case):
    model = build_model(case)
    tokens = prompt_ids(model)
    graph = circuit_atlas.attribute(model, tokens, progress=False)
    run = model.run(tokens)
    probe = FrozenProbe(model, run)
    base = probe.record()
    scale = float(graph.adjacency.abs().max())
    assert torch.nonzero(graph.adjacency[: graph.selected_features.shape[0]]).shape[0] > 0
    checked = 0
    for row, column in _sample_edges(graph, torch.Generator().manual_seed(1)):
        emb_delta, out_deltas = _source_perturbation(graph, run, model, column)
        moved = probe.record(emb_delta, out_deltas)
        expected = _target_readout(graph, model, row, moved) - _target_readout(graph, model, row, base)
        actual = float(graph.adjacency[row, column])
        assert _relative_close(actual, expected, scale), (case, row, column, actual, expected)
        checked += 1
    assert checked > 20


def test_rows_sum_to_readout_minus_constants(case):
    """Completeness identity: incoming edges + constant terms = pre-activation (or logit)."""
    model = build_model(case)
    tokens = prompt_ids(model, seed=2)
    graph = circuit_atlas.attribute(model, tokens, progress=False)
    run = model.run(tokens)
    probe = FrozenProbe(model, run)
    n_sel = graph.selected_features.shape[0]
    assert n_sel == graph.active_features.shape[0]  # full graph: every active feature has a row
    # Remove every source at once: all token vectors, all errors, all feature decoder outputs.
    dense = run.activations.to_dense()
    removal = {}
    for layer in range(model.n_layers):
        sources = {s: dense[s] for s in range(layer + 1) if layer in model.transcoders.target_layers(s)}
        written = torch.zeros_like(run.errors[layer])
        for source_layer, acts in sources.items():
            written += model.transcoders.decode(source_layer, acts, layer)
        removal[layer] = -(written + run.errors[layer])
    empty = probe.record(-run.token_vectors, removal)
    clean = run.record
    for row in range(graph.adjacency.shape[0]):
        constant = _target_readout(graph, model, row, empty)
        total = _target_readout(graph, model, row, clean)
        incoming = float(graph.adjacency[row].double().sum())
        assert abs(incoming + constant - total) <= 1e-4 * max(1.0, abs(total)), (case, row, incoming, constant, total)
    # The same identity against the transcoder's own pre-activation (bias included).
    biases = [model.transcoders.pre_activation(l, torch.zeros(1, model.d_model, device=run.errors.device))[0] for l in range(model.n_layers)]
    for row in range(n_sel):
        layer, pos, feature = graph.active_features[graph.selected_features[row]].tolist()
        pre = float(model.transcoders.pre_activation(layer, run.mlp_inputs[layer, pos][None])[0, feature])
        constant = _target_readout(graph, model, row, empty) + float(biases[layer][feature])
        assert abs(float(graph.adjacency[row].double().sum()) + constant - pre) <= 1e-4 * max(1.0, abs(pre))


def test_vmap_and_expanded_batches_agree():
    model = build_model("llama-clt")
    tokens = prompt_ids(model)
    a = circuit_atlas.attribute(model, tokens, strategy="vmap", batch_size=16, progress=False)
    b = circuit_atlas.attribute(model, tokens, strategy="expand", batch_size=7, progress=False)
    assert torch.allclose(a.adjacency, b.adjacency, atol=1e-5, rtol=1e-4)


def test_logit_difference_row_is_difference_of_token_rows():
    model = build_model("gemma2-plt")
    tokens = prompt_ids(model)
    pair = circuit_atlas.attribute(model, tokens, targets=[10, 11], max_feature_nodes=0, progress=False)
    diff = circuit_atlas.attribute(model, tokens, targets=[LogitDifference(10, 11)], max_feature_nodes=0, progress=False)
    n_sel = 0
    expected = pair.adjacency[n_sel] - pair.adjacency[n_sel + 1]
    assert torch.allclose(diff.adjacency[0], expected, atol=1e-5)
    assert int(diff.logit_token_ids[0]) >= model.lm.vocab_size  # virtual id for a custom direction


def test_long_prompts_use_prefix_passes_with_identical_rows(monkeypatch):
    """Rows computed through shorter prefix passes equal rows from whole-prompt passes."""
    from circuit_atlas.attribution import rows as rows_module
    from circuit_atlas.attribution import sweep as sweep_module
    from circuit_atlas.models.tiny import tiny_language_model
    from circuit_atlas.transcoders.random import random_transcoders

    lm = tiny_language_model("gemma2", seed=3, n_layers=2, d_model=32, max_positions=128)
    tc = random_transcoders("clt", n_layers=2, d_model=32, n_features=24, seed=5,
                            input_hook="hook_resid_mid", output_hook="hook_mlp_out")
    model = circuit_atlas.load(lm, tc)
    tokens = prompt_ids(model, length=90, seed=4)
    lengths_used = []  # the prefix each batch of rows ran over (closed-form hops build no frozen pass)
    original = sweep_module.LayerSweep._use_length

    def spy(self, reach):
        lengths_used.append(original(self, reach))
        return lengths_used[-1]

    monkeypatch.setattr(sweep_module.LayerSweep, "_use_length", spy)
    bucketed = circuit_atlas.attribute(model, tokens, max_feature_nodes=300, batch_size=32, progress=False)
    assert len(set(lengths_used)) > 1 and min(lengths_used) < 90  # prefixes were really used
    monkeypatch.setattr(rows_module, "MIN_BUCKETED_LENGTH", 10_000)  # the dense engine's prefixes
    monkeypatch.setattr(sweep_module, "MIN_PREFIX_LENGTH", 10_000)  # the compact engine's
    lengths_used.clear()
    whole = circuit_atlas.attribute(model, tokens, max_feature_nodes=300, batch_size=32, progress=False)
    assert set(lengths_used) == {90}
    assert torch.equal(bucketed.selected_features, whole.selected_features)
    assert torch.allclose(bucketed.adjacency, whole.adjacency, atol=1e-5, rtol=1e-4)
    # And a few edges of the long prompt against the independent frozen-model probe.
    run = model.run(tokens)
    probe = FrozenProbe(model, run)
    base = probe.record()
    scale = float(bucketed.adjacency.abs().max())
    for row, column in _sample_edges(bucketed, torch.Generator().manual_seed(7), per_kind=3):
        emb_delta, out_deltas = _source_perturbation(bucketed, run, model, column)
        moved = probe.record(emb_delta, out_deltas)
        expected = _target_readout(bucketed, model, row, moved) - _target_readout(bucketed, model, row, base)
        assert _relative_close(float(bucketed.adjacency[row, column]), expected, scale)
