"""Free mode: the real model with features clamped, compared with re-runs written here by hand
(`lm.forward` + an `output_edit` that adds or removes decoder outputs)."""

from __future__ import annotations

import pytest
import torch

from circuit_atlas.interventions import Intervention, Supernode, intervene
from circuit_atlas.models import FreezeSpec
from circuit_atlas.models.freeze import LIVE, REPLAY

from .conftest import build_model, prompt_ids


def _decoder_edit(model, removals, freeze=None):
    """Re-run the model with `Σ coefficient · W_dec^{(k)}(feature)` added at each (layer, position)
    the features write to; `removals` is a list of (layer, position, feature, coefficient)."""
    tc = model.transcoders

    def edit(layer, x_in, y_out):
        y = y_out.clone()
        for source, position, feature, coefficient in removals:
            if layer in tc.target_layers(source):
                y[0, position] += coefficient * tc.decoder_rows(source, torch.tensor([feature]), layer)[0]
        return y

    return edit


def _forward(model, ids, edit, freeze=None):
    return model.lm.forward(ids[None], input_hook=model.input_hook, output_hook=model.output_hook,
                            output_edit=edit, freeze=freeze, record_internals=False)


def _strongest(run, layer: int, position: int) -> tuple[int, float]:
    acts = run.activations[layer][position].to_dense()
    feature = int(acts.argmax())
    return feature, float(acts[feature])


def test_free_ablation_equals_rerun_without_decoder_output(case) -> None:
    model = build_model(case)
    ids = prompt_ids(model)
    run = model.run(ids)
    layer, position = 0, 4
    feature, activation = _strongest(run, layer, position)
    result = intervene(model, ids, Intervention(layer, position, feature, ablate=True), run=run)
    expected = _forward(model, ids, _decoder_edit(model, [(layer, position, feature, -activation)]))
    assert (expected.logits[0] - run.logits).abs().max() > 1e-4  # the ablation does something
    torch.testing.assert_close(result.logits, expected.logits[0], rtol=1e-5, atol=1e-5)
    # downstream activations are recomputed (indirect paths included): re-encode the re-run
    tc = model.transcoders
    for l in range(model.n_layers):
        natural = tc.encode(l, expected.inputs[l][0])
        natural[: run.n_zeroed_positions] = 0
        if l == layer:
            natural[position, feature] = 0.0  # the result shows the value that was set
        torch.testing.assert_close(result.activations_after[l].to_dense(), natural, rtol=1e-5, atol=1e-5)


def test_later_deltas_use_activations_of_the_intervened_pass() -> None:
    """A layer-2 scale is taken relative to its activation *after* the layer-0 change."""
    model = build_model("llama-clt")
    ids = prompt_ids(model)
    run = model.run(ids)
    f0, _ = _strongest(run, 0, 3)
    first = [(0, 3, f0, 4.0 - float(run.activations[0][3].to_dense()[f0]))]
    partial = _forward(model, ids, _decoder_edit(model, first))
    acts2 = model.transcoders.encode(2, partial.inputs[2][0])[5]
    f2 = int(acts2.argmax())
    clean2 = float(run.activations[2][5].to_dense()[f2])
    assert abs(float(acts2[f2]) - clean2) > 1e-3  # layer 0's change moved it
    both = first + [(2, 5, f2, -0.5 * float(acts2[f2]))]
    expected = _forward(model, ids, _decoder_edit(model, both)).logits[0]
    result = intervene(model, ids, [Intervention(0, 3, f0, value=4.0), Intervention(2, 5, f2, scale=0.5)], run=run)
    torch.testing.assert_close(result.logits, expected, rtol=1e-5, atol=1e-5)
    applied = {item.layer: item for item in result.applied}
    assert float(applied[2].before[0]) == pytest.approx(float(acts2[f2]), rel=1e-5)


def test_freeze_attention_replays_clean_patterns() -> None:
    model = build_model("gemma2-plt")
    ids = prompt_ids(model)
    run = model.run(ids)
    feature, activation = _strongest(run, 0, 2)
    change = [(0, 2, feature, 25.0 - activation)]
    frozen = _forward(model, ids, _decoder_edit(model, change),
                      FreezeSpec(attention=REPLAY, norms=LIVE, replay_from=run.record)).logits[0]
    live = _forward(model, ids, _decoder_edit(model, change)).logits[0]
    assert (frozen - live).abs().max() > 1e-3  # patterns did move, so freezing is visible
    result = intervene(model, ids, Intervention(0, 2, feature, value=25.0), freeze_attention=True, run=run)
    assert result.freeze_attention
    torch.testing.assert_close(result.logits, frozen, rtol=1e-5, atol=1e-5)


def test_supernode_equals_its_members_and_result_fields() -> None:
    model = build_model("llama-plt-skip")
    ids = prompt_ids(model)
    run = model.run(ids)
    dense = run.activations.to_dense()
    members = [tuple(t) for t in dense[0].nonzero()[:3].tolist()]
    members = [(0, p, f) for p, f in members]
    via_supernode = intervene(model, ids, Supernode(members, scale=-1.0, name="x"), run=run)
    via_members = intervene(model, ids, [Intervention(l, p, f, scale=-1.0) for l, p, f in members], run=run)
    torch.testing.assert_close(via_supernode.logits, via_members.logits, rtol=0, atol=0)
    # top tokens are the softmax of the returned logits
    probs = torch.softmax(via_supernode.logits[-1], -1)
    top = torch.topk(probs, 10)
    assert [t.token_id for t in via_supernode.top_after] == top.indices.tolist()
    assert [t.prob for t in via_supernode.top_after] == pytest.approx(top.values.tolist(), rel=1e-6)
    clean_top = torch.topk(torch.softmax(run.logits[-1], -1), 10).indices.tolist()
    assert [t.token_id for t in via_supernode.top_before] == clean_top
    # the change table agrees with the two activation tensors and shows the set values
    ch = via_supernode.changes
    after = via_supernode.activations_after.to_dense()
    for (l, p, f), b, a in zip(ch.indices.tolist(), ch.before.tolist(), ch.after.tolist()):
        assert a == pytest.approx(float(after[l, p, f])) and b == pytest.approx(float(dense[l, p, f]))
    for l, p, f in members:
        assert float(after[l, p, f]) == pytest.approx(-float(dense[l, p, f]))
    n_differ = int((after != dense).sum())
    assert len(ch) == n_differ > len(members)
    assert (ch.after - ch.before).abs().tolist() == sorted((ch.after - ch.before).abs().tolist(), reverse=True)
    summary = via_supernode.to_dict(max_changes=5)
    assert len(summary["changed_features"]) == 5 and summary["n_changed_features"] == n_differ


def test_open_slice_and_all_positions_skip_the_bos_position() -> None:
    model = build_model("llama-plt-skip")
    ids = prompt_ids(model)
    run = model.run(ids)
    result = intervene(model, ids, Intervention(1, None, 7, value=2.0), run=run)
    (item,) = result.applied
    assert item.positions.tolist() == list(range(1, len(ids)))
    result = intervene(model, ids, Intervention(1, slice(-3, None), 7, value=2.0), run=run)
    assert result.applied[0].positions.tolist() == [4, 5, 6]
    result = intervene(model, ids, Intervention(1, slice(1, None, 2), [7, 8], ablate=True), run=run)
    assert result.applied[0].positions.tolist() == [1, 1, 3, 3, 5, 5]
    assert result.applied[0].features.tolist() == [7, 8] * 3
