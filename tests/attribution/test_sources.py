"""Decoder blocks: every active feature's vector stored once per target layer, little padding."""

from __future__ import annotations

import torch

from circuit_atlas.attribution.sources import WIDTH_GROWTH, collect_sources

from .conftest import build_model, prompt_ids


def test_blocks_hold_each_scaled_decoder_vector_once_with_bounded_padding():
    model = build_model("llama-clt", n_features=96)
    run = model.run(prompt_ids(model, length=12, seed=4))
    sources = collect_sources(model.transcoders, run, torch.float32)
    active = sources.active_features
    tc = model.transcoders
    assert any(len(group.blocks) > 1 for group in sources.decoder_groups)  # the multi-block path
    for target, group in enumerate(sources.decoder_groups):
        seen = []
        for block in group.blocks:
            assert block.position_list == sorted(block.position_list) == block.positions.tolist()
            counts = block.valid.sum(1)
            assert int(counts.min()) > 0 and block.valid.shape[1] == int(counts.max())
            # positions share a block only when their counts are within the growth factor
            assert int(counts.max()) <= WIDTH_GROWTH * int(counts.min())
            for row, position in enumerate(block.position_list):
                for slot in torch.nonzero(block.valid[row]).flatten().tolist():
                    column = int(block.columns[row, slot])
                    layer, pos, feature = active[column].tolist()
                    assert pos == position and target in tc.target_layers(layer)
                    expected = float(sources.activation_values[column]) * tc.decoder_rows(
                        layer, torch.tensor([feature]), target)[0].float()
                    torch.testing.assert_close(block.vectors[row, slot].float(), expected.to(block.vectors.device))
                    seen.append(column)
        # exactly the active features of layers that write here, each once
        writers = [i for i, (layer, _p, _f) in enumerate(active.tolist()) if target in tc.target_layers(layer)]
        assert sorted(seen) == writers


def test_slots_planned_from_counts_equal_the_slots_stored():
    """The memory check counts decoder slots before gathering any vector; it must count exactly
    what `collect_sources` then stores, for PLTs and CLTs."""
    from circuit_atlas.attribution.sources import decoder_slots

    for case in ("llama-plt-skip", "llama-clt"):
        model = build_model(case, n_features=96)
        run = model.run(prompt_ids(model, length=15, seed=7))
        sources = collect_sources(model.transcoders, run, torch.float32)
        planned = decoder_slots(run.activations.coalesce().indices().t(), 15, model.transcoders)
        assert planned == sum(group.slots for group in sources.decoder_groups) > 0
