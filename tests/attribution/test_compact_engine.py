"""The compact engine gives the dense engine's graph: same nodes, every edge equal.

The dense engine (`engine="dense"`, the earlier engine, itself checked edge by edge against an
autograd-free evaluation of the frozen model in `test_edges.py`) is the reference. Cases cover
PLTs with skips, CLTs, grouped-query attention, Gemma-2's soft-caps and sliding windows, prompts
long enough for prefix passes and longer than the sliding window, node budgets that make the
compact buffer drop columns, and a buffer so small that dropped columns must be filled in by
forward-mode passes.
"""

from __future__ import annotations

import pytest
import torch

import circuit_atlas
from circuit_atlas.attribution import compact as compact_module
from circuit_atlas.attribution import fill as fill_module
from circuit_atlas.attribution import store as store_module
from circuit_atlas.attribution.exploration import partial_influence
from circuit_atlas.attribution.store import RowStore
from circuit_atlas.models import attention as attention_module

from .conftest import CASES, FrozenProbe, build_model, prompt_ids

RELATIVE = 1e-5


def assert_same_graph(compact, dense):
    """Same selected nodes, same active features and targets, every edge within 1e-5 relative
    (to the edge, or to the largest edge of its row for edges that are sums close to 0)."""
    assert torch.equal(compact.active_features, dense.active_features)
    assert torch.equal(compact.selected_features, dense.selected_features)
    assert torch.equal(compact.logit_token_ids, dense.logit_token_ids)
    assert compact.adjacency.shape == dense.adjacency.shape
    row_scale = dense.adjacency.abs().amax(1, keepdim=True)
    difference = (compact.adjacency - dense.adjacency).abs()
    allowed = RELATIVE * torch.maximum(dense.adjacency.abs(), row_scale)
    worst = float((difference - allowed).max())
    assert worst <= 0, f"an edge differs by more than {RELATIVE:g} relative (excess {worst:g})"


def _both(model, tokens, **kwargs):
    dense = circuit_atlas.attribute(model, tokens, engine="dense", progress=False, **kwargs)
    compact = circuit_atlas.attribute(model, tokens, engine="compact", progress=False, **kwargs)
    return compact, dense


def test_full_graphs_agree(case):
    model = build_model(case)
    compact, dense = _both(model, prompt_ids(model, length=9, seed=5))
    assert compact.settings["engine"] == "compact" and dense.settings["engine"] == "dense"
    assert_same_graph(compact, dense)


@pytest.mark.parametrize("case", list(CASES))
def test_budgeted_graphs_agree_while_columns_are_dropped(case):
    model = build_model(case, n_layers=3, d_model=48, n_features=96)
    tokens = prompt_ids(model, length=20, seed=3)
    n_active = int(model.run(tokens).activations._nnz())
    compact, dense = _both(model, tokens, max_feature_nodes=n_active // 6, batch_size=8, update_interval=2)
    assert compact.settings["kept_columns"] < n_active  # the buffer really dropped columns
    assert_same_graph(compact, dense)


@pytest.mark.parametrize("case", ["llama-clt", "gemma2-plt"])
def test_dropped_columns_that_turn_out_to_matter_are_filled_in_exactly(case, monkeypatch):
    """With no spare kept columns the bounds cannot certify every round: columns are filled in by
    forward-mode passes, and the graph is still the dense one."""
    monkeypatch.setattr(store_module, "KEEP_FACTOR", 0.0)
    monkeypatch.setattr(store_module, "FILL_STEP", 8)
    monkeypatch.setattr(compact_module, "FILL_STEP", 8)
    model = build_model(case, n_layers=3, d_model=48, n_features=96)
    tokens = prompt_ids(model, length=20, seed=3)
    n_active = int(model.run(tokens).activations._nnz())
    compact, dense = _both(model, tokens, max_feature_nodes=n_active // 5, batch_size=8, update_interval=1)
    assert compact.settings["filled_columns"] > 0
    assert_same_graph(compact, dense)


def test_long_prompt_with_prefix_passes_tiny_attention_tiles_and_sliding_windows(monkeypatch):
    """Gemma-2 (soft-caps, sliding window of 4 on alternate layers, GQA) at 90 tokens: prefix
    buckets, many attention tiles, skipped tiles outside the window, dropped columns."""
    from circuit_atlas.models.tiny import tiny_language_model
    from circuit_atlas.transcoders.random import random_transcoders

    monkeypatch.setattr(attention_module, "BLOCK_ELEMENTS", 4 * 16 * 16)
    lm = tiny_language_model("gemma2", seed=3, n_layers=3, d_model=32, max_positions=128)
    tc = random_transcoders("clt", n_layers=3, d_model=32, n_features=24, seed=5,
                            input_hook="hook_resid_mid", output_hook="hook_mlp_out")
    model = circuit_atlas.load(lm, tc)
    tokens = prompt_ids(model, length=90, seed=4)
    compact, dense = _both(model, tokens, max_feature_nodes=150, batch_size=16, update_interval=2)
    assert compact.settings["kept_columns"] < compact.active_features.shape[0]
    assert_same_graph(compact, dense)


def test_gemma2_output_hook_before_the_post_mlp_norm():
    """Rows taken wholly in closed form (no frozen pass) through Gemma-2's post-MLP norm."""
    from circuit_atlas.models.tiny import tiny_language_model
    from circuit_atlas.transcoders.random import random_transcoders

    lm = tiny_language_model("gemma2", seed=3, n_layers=3, d_model=32, max_positions=64)
    tc = random_transcoders("clt", n_layers=3, d_model=32, n_features=24, seed=5,
                            input_hook="mlp.hook_in", output_hook="mlp.hook_out")
    model = circuit_atlas.load(lm, tc)
    compact, dense = _both(model, prompt_ids(model, length=30, seed=4), max_feature_nodes=40, batch_size=8)
    assert_same_graph(compact, dense)


def test_long_gemma3_prompt_with_per_head_norms_over_prefixes():
    """Gemma-3 (q/k norms whose scales put positions second, sliding window) at 72 tokens: the
    prefix passes replay those scales cut along positions, and the graph is the dense one."""
    from circuit_atlas.models.tiny import tiny_language_model
    from circuit_atlas.transcoders.random import random_transcoders

    lm = tiny_language_model("gemma3", seed=3, n_layers=2, d_model=32, max_positions=128)
    tc = random_transcoders("plt", n_layers=2, d_model=32, n_features=24, seed=5,
                            input_hook="ln2.hook_normalized", output_hook="hook_mlp_out")
    model = circuit_atlas.load(lm, tc)
    tokens = prompt_ids(model, length=72, seed=4)
    compact, dense = _both(model, tokens, max_feature_nodes=120, batch_size=16, update_interval=2)
    assert_same_graph(compact, dense)


def test_expanded_batches_agree_with_vmap_batches():
    model = build_model("gemma2-clt")
    tokens = prompt_ids(model, length=12, seed=6)
    a = circuit_atlas.attribute(model, tokens, strategy="vmap", batch_size=16, max_feature_nodes=60, progress=False)
    b = circuit_atlas.attribute(model, tokens, strategy="expand", batch_size=7, max_feature_nodes=60,
                                update_interval=2, progress=False)
    assert a.settings["strategy"] == "vmap" and b.settings["strategy"] == "expand"
    full = circuit_atlas.attribute(model, tokens, progress=False)
    torch.testing.assert_close(b.adjacency[:, b.selected_features.shape[0]:],
                               full.adjacency[torch.cat([b.selected_features, torch.arange(
                                   full.selected_features.shape[0], full.adjacency.shape[0])])][
                                   :, full.selected_features.shape[0]:], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a.adjacency[:, a.selected_features.shape[0]:],
                               full.adjacency[torch.cat([a.selected_features, torch.arange(
                                   full.selected_features.shape[0], full.adjacency.shape[0])])][
                                   :, full.selected_features.shape[0]:], rtol=1e-4, atol=1e-5)


def test_fill_in_columns_equal_independent_direct_effects():
    """`fill_columns` against the autograd-free frozen-model probe: adding a feature's vectors
    changes each target's readout by exactly the filled-in entry."""
    model = build_model("llama-plt-skip")
    tokens = prompt_ids(model, length=8, seed=2)
    graph = circuit_atlas.attribute(model, tokens, progress=False)
    run = model.run(tokens, compact=True)
    active = graph.active_features
    n_sel = graph.selected_features.shape[0]
    rows = torch.arange(0, n_sel, 3)
    from circuit_atlas.attribution.dense import encoder_rows
    from circuit_atlas.attribution.store import RowTargets

    targets = RowTargets(active[rows, 0], active[rows, 1], encoder_rows(model.transcoders, active[rows], "cpu",
                                                                         torch.float32))
    columns = torch.tensor([0, 5, 17, n_sel - 1])
    filled = fill_module.fill_columns(model, run, active, graph.activation_values, columns, targets,
                                      rows.numel(), batch_size=3)
    torch.testing.assert_close(filled, graph.adjacency[rows][:, columns], rtol=1e-5, atol=1e-6)
    probe = FrozenProbe(model, model.run(tokens))
    base = probe.record()
    layer, position, feature = active[columns[1]].tolist()
    delta = torch.zeros_like(run.errors[layer])
    delta[position] = graph.activation_values[columns[1]] * model.transcoders.decoder_rows(
        layer, torch.tensor([feature]), layer)[0]
    moved = probe.record(None, {layer: delta})
    for i, row in enumerate(rows.tolist()):
        r_layer, r_pos, r_feature = active[row].tolist()
        expected = (FrozenProbe.feature_readout(moved, model.transcoders, r_layer, r_pos, r_feature)
                    - FrozenProbe.feature_readout(base, model.transcoders, r_layer, r_pos, r_feature))
        assert abs(float(filled[i, 1]) - expected) <= 1e-4 * max(1.0, abs(expected))


def test_bounds_hold_for_every_dropped_column():
    """Lower bound ≤ exact influence ≤ upper bound, for rows of features whose weights have grown
    since their rows were made (the dense engine's full rows give the exact values)."""
    model = build_model("llama-clt", n_layers=3, d_model=48, n_features=96)
    tokens = prompt_ids(model, length=16, seed=8)
    dense = circuit_atlas.attribute(model, tokens, engine="dense", progress=False)
    n_active = dense.active_features.shape[0]
    n_logits = len(dense.logit_tokens)
    full = dense.adjacency  # [features ascending | logits] × [features | errors | tokens]
    n_fixed = full.shape[1] - n_active
    nodes = torch.cat([torch.arange(n_logits) + full.shape[1], torch.arange(n_active)])
    rows = torch.cat([full[n_active:], full[:n_active]])
    layers = torch.cat([torch.full((n_logits,), 3), dense.active_features[:, 0]])
    order = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(0))[: rows.shape[0] // 2]
    order = torch.cat([torch.arange(n_logits), order[order >= n_logits]])
    rows, nodes, layers = rows[order], nodes[order], layers[order]
    early = rows.shape[0] // 2  # rows made "earlier", with the weights their nodes had then
    weights_early = _row_weights(rows[:early], nodes[:early], layers[:early], dense, full.shape[1])
    store = RowStore(n_active=n_active, n_fixed=n_fixed, capacity_rows=rows.shape[0], capacity_columns=n_active // 2,
                     n_groups=3, d_model=model.d_model, vector_dtype=torch.float32)
    from circuit_atlas.attribution.store import RowTargets

    blank = RowTargets(torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), torch.zeros(1, model.d_model))
    bases = torch.cat([weights_early, torch.zeros(rows.shape[0] - early)])
    weights_late = _row_weights(rows, nodes, layers, dense, full.shape[1])
    bases[early:] = weights_late[early:]
    for start, stop, group in ((0, early, 0), (early, rows.shape[0], 1)):
        for i in range(start, stop):
            store.add(rows[i : i + 1, :n_active], rows[i : i + 1, n_active:], nodes[i : i + 1].where(
                nodes[i : i + 1] < full.shape[1], nodes[i : i + 1] - full.shape[1] + n_active), bases[i : i + 1], group,
                RowTargets(blank.layers, blank.positions, blank.vectors))
    exact = partial_influence(rows, nodes, dense.logit_probabilities, full.shape[1], layers)[:n_active]
    upper = store.upper_bounds(weights_late)
    lower = store.summary.sum(0)
    assert bool((weights_late[:early] >= weights_early * (1 - 1e-6)).all())  # weights only grow
    assert bool((upper >= exact * (1 - 1e-5)).all())
    assert bool((lower <= exact * (1 + 1e-5) + 1e-12).all())
    assert float(upper.sum()) < 10 * float(exact.sum())  # and not uselessly loose


def _row_weights(rows, nodes, layers, graph, n_columns):
    from circuit_atlas.attribution.exploration import influence_and_weights

    return influence_and_weights(rows, nodes, graph.logit_probabilities, n_columns, layers)[1]
