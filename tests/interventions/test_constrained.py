"""Constrained patching: the graph's direct effects, reproduced by intervening.

With attention, norms and every MLP frozen (all layers constrained), ablating a source feature
must change each downstream feature's pre-activation, and each target logit, by exactly minus
its attribution edge (docs/algorithm.md §12.5). The readouts here are computed from the raw input-hook
values and the unembedding, not from anything the intervention code reports about edges.
"""

from __future__ import annotations

import pytest
import torch

from circuit_atlas.errors import InterventionError
from circuit_atlas.interventions import Intervention, Supernode, intervene
from circuit_atlas.models import FreezeSpec

from .conftest import build_model, centred_logit_readout, graph_for, pre_activation_readout, prompt_ids

RTOL = 1e-4


def _sources(graph, per_layer: int = 3) -> list[int]:
    """Adjacency columns of a few features in each layer but the last, at varied positions."""
    coords = graph.feature_coords
    picks = []
    for layer in range(graph.n_layers - 1):
        members = (coords[:, 0] == layer).nonzero().flatten()
        step = max(1, len(members) // per_layer)
        picks += members[::step][:per_layer].tolist()
    return picks


def test_ablation_changes_downstream_by_minus_edge(case) -> None:
    model, graph = build_model(case), graph_for(case)
    ids = graph.input_ids
    run = model.run(ids)
    n_sel = graph.n_selected
    coords = graph.feature_coords
    before = pre_activation_readout(model, coords, run.mlp_inputs)
    logits_before = centred_logit_readout(model, run.final_hidden, graph.logit_token_ids)
    checked_nonzero = 0
    for column in _sources(graph):
        layer, position, feature = coords[column].tolist()
        result = intervene(model, ids, Intervention(layer, position, feature, ablate=True),
                           mode="constrained", run=run)
        actual = pre_activation_readout(model, coords, result.mlp_inputs) - before
        expected = -graph.adjacency[:n_sel, column].double()
        scale = float(expected.abs().max())
        assert scale > 0, "source without downstream edges: the test would be vacuous"
        assert torch.allclose(actual, expected, rtol=0, atol=RTOL * scale), (case, column)
        logit_actual = centred_logit_readout(model, result.final_hidden, graph.logit_token_ids) - logits_before
        logit_expected = -graph.adjacency[n_sel:, column].double()
        # float32 noise of a logit readout is ~1e-7 absolute, hence the floor on the scale
        assert torch.allclose(logit_actual, logit_expected, rtol=0,
                              atol=RTOL * max(float(logit_expected.abs().max()), 1e-2))
        checked_nonzero += int((expected.abs() > 1e-3 * scale).sum())
    assert checked_nonzero > 20


def test_clt_ablation_writes_through_every_decoder() -> None:
    """The same check restricted to targets two layers down: only a CLT's layer+1 decoder reaches
    them directly, so an implementation writing only into the source layer fails here."""
    case = "llama-clt"
    model, graph = build_model(case), graph_for(case)
    run = model.run(graph.input_ids)
    coords = graph.feature_coords
    column = int((coords[:, 0] == 0).nonzero()[0])
    layer, position, feature = coords[column].tolist()
    result = intervene(model, graph.input_ids, Intervention(layer, position, feature, ablate=True),
                       mode="constrained", run=run)
    # Independent: held MLPs with the source's decoder output removed from layer 0 only.
    tc = model.transcoders
    activation = float(graph.selected_activations[column])

    def edit(l, x_in, y_out):
        value = run.mlp_outputs[l][None].clone()
        if l == 0:
            value[0, position] -= activation * tc.decoder_rows(0, torch.tensor([feature]), 0)[0]
        return value

    record = model.lm.forward(graph.input_ids[None], input_hook=model.input_hook,
                              output_hook=model.output_hook, freeze=FreezeSpec.replayed(run.record),
                              output_edit=edit, record_internals=False)
    layer2 = (coords[:, 0] == 2).nonzero().flatten()
    full = pre_activation_readout(model, coords[layer2], result.mlp_inputs)
    own_layer_only = pre_activation_readout(model, coords[layer2], torch.stack([x[0] for x in record.inputs]))
    assert (full - own_layer_only).abs().max() > 1e-3  # the later decoders matter


def test_partial_range_holds_only_those_layers(case) -> None:
    """constrained_layers=[0]: layer 0's MLP is held (skip live), later MLPs run for real, and
    the CLT's writes into layers outside the range are dropped."""
    model = build_model(case)
    ids = prompt_ids(model)
    run = model.run(ids)
    layer, position = 0, 3
    feature = int(run.activations[layer][position].to_dense().argmax())
    activation = float(run.activations[layer][position].to_dense()[feature])
    tc = model.transcoders

    def edit(l, x_in, y_out):
        if l != 0:
            return y_out
        value = run.mlp_outputs[0][None].clone()
        if tc.has_skip:
            value = value + (tc.skip(0, x_in[0]) - tc.skip(0, run.mlp_inputs[0]))[None]
        value[0, position] -= activation * tc.decoder_rows(0, torch.tensor([feature]), 0)[0]
        return value

    expected = model.lm.forward(ids[None], input_hook=model.input_hook, output_hook=model.output_hook,
                                freeze=FreezeSpec.replayed(run.record), output_edit=edit,
                                record_internals=False).logits[0]
    result = intervene(model, ids, Intervention(layer, position, feature, ablate=True), mode="constrained",
                       constrained_layers=[0], run=run)
    assert result.constrained_layers == (0,)
    assert (expected - run.logits).abs().max() > 1e-4
    torch.testing.assert_close(result.logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["free", "constrained"])
def test_setting_current_value_changes_nothing(case, mode) -> None:
    model = build_model(case)
    ids = prompt_ids(model)
    run = model.run(ids)
    dense = run.activations.to_dense()
    active = dense.nonzero()[::7][:6]
    interventions = [Intervention(l, p, f, value=float(dense[l, p, f])) for l, p, f in active.tolist()]
    interventions.append(Intervention(1, None, [0, 1, 2], scale=1.0))
    result = intervene(model, ids, interventions, mode=mode, run=run)
    assert (result.logits - run.logits).abs().max() <= 1e-5
    assert (result.mlp_inputs - run.mlp_inputs).abs().max() <= 1e-5
    assert len(result.changes) == 0


def test_constrained_deltas_are_relative_to_clean_activations() -> None:
    """Scaling by k in constrained mode adds (k − 1) times each member's edge column, also for a
    member whose input the other members change (its delta still uses the clean activation)."""
    case = "gemma2-plt"
    model, graph = build_model(case), graph_for(case)
    run = model.run(graph.input_ids)
    coords = graph.feature_coords
    n_sel = graph.n_selected
    columns = (coords[:, 0] == 0).nonzero().flatten()[:3]
    layer1 = (coords[:, 0] == 1).nonzero().flatten()
    pushed = graph.adjacency[:n_sel, columns].sum(1)[layer1].abs()
    downstream = layer1[pushed.argmax()]
    assert float(pushed.max()) > 1e-3
    columns = torch.cat([columns, downstream[None]])
    members = [tuple(coords[c].tolist()) for c in columns]
    result = intervene(model, graph.input_ids, Supernode(members, scale=-2.0), mode="constrained", run=run)
    before = pre_activation_readout(model, coords, run.mlp_inputs)
    actual = pre_activation_readout(model, coords, result.mlp_inputs) - before
    expected = -3.0 * graph.adjacency[:n_sel, columns].double().sum(1)
    assert torch.allclose(actual, expected, rtol=0, atol=RTOL * float(expected.abs().max()))
    clean = graph.activation_values[graph.selected_features[columns]]
    for item in result.applied:
        torch.testing.assert_close(item.after, -2.0 * item.before)
    befores = torch.cat([item.before for item in result.applied])
    torch.testing.assert_close(befores.sort().values, clean.sort().values)


def test_intervention_outside_constrained_range_is_refused() -> None:
    model = build_model("llama-clt")
    with pytest.raises(InterventionError, match=r"layer\(s\) \[2\] lie outside constrained_layers \[0, 1\]"):
        intervene(model, prompt_ids(model), Intervention(2, 3, 0, ablate=True), mode="constrained",
                  constrained_layers=range(2))
