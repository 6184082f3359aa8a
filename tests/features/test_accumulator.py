"""LayerAccumulator on hand-made batches: the example rows it hands out, checked one by one against
contexts cut by a plain loop (the builder's tests check the same through a whole store)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from circuit_atlas.features.accumulator import KIND_SAMPLE, KIND_TOP, LayerAccumulator, _Batch, _Entering
from circuit_atlas.features.histogram import default_edges
from circuit_atlas.features.keys import occurrence_id

BEFORE, AFTER = 2, 1


def _accumulator(n_features: int, top_k: int = 3, n_samples: int = 50) -> LayerAccumulator:
    return LayerAccumulator(0, n_features, top_k=top_k, n_samples=n_samples, seed=7,
                            edges=default_edges(), before=BEFORE, after=AFTER,
                            device=torch.device("cpu"))


def _batch(seed: int = 0, B: int = 4, P: int = 6, F: int = 5):
    gen = torch.Generator().manual_seed(seed)
    acts = torch.randn(B, P, F, generator=gen).clamp(min=0)
    lengths = torch.tensor([P, P - 2, 3, P][:B])
    for b, n in enumerate(lengths.tolist()):
        acts[b, n:] = 0  # no statistics past a window's end
    tokens = torch.randint(0, 30, (B, P), generator=gen)
    oids = torch.tensor([[occurrence_id(b, 0, p) for p in range(P)] for b in range(B)])
    return acts, tokens, oids, lengths


def _expected_context(acts, tokens, lengths, b: int, p: int, f: int):
    """Tokens and activations of `[p - BEFORE, p + AFTER]` inside window `b`, and the focus."""
    lo, hi = max(0, p - BEFORE), min(int(lengths[b]), p + AFTER + 1)
    return tokens[b, lo:hi].tolist(), acts[b, lo:hi, f].tolist(), p - lo


def _check_rows(rows, acts, tokens, lengths, oids) -> int:
    where = {int(oids[b, p]): (b, p) for b in range(oids.shape[0]) for p in range(oids.shape[1])}
    for i in range(len(rows)):
        b, p = where[int(rows.oids[i])]
        f = int(rows.features[i])
        want_tokens, want_acts, want_focus = _expected_context(acts, tokens, lengths, b, p, f)
        start, stop = int(rows.starts[i]), int(rows.stops[i])
        assert rows.tokens[i, start:stop].tolist() == want_tokens
        np.testing.assert_allclose(rows.acts[i, start:stop], want_acts, rtol=0, atol=0)
        assert int(rows.focus[i]) == want_focus
        assert rows.activations[i] == pytest.approx(float(acts[b, p, f]))
    return len(rows)


def test_example_rows_carry_each_occurrences_own_context():
    acc = _accumulator(5)
    acts, tokens, oids, lengths = _batch()
    added, removed = acc.update(acts, tokens, oids, lengths)
    top, sample = added
    assert top.kind == KIND_TOP and sample.kind == KIND_SAMPLE
    assert all(len(r) == 0 for r in removed)
    assert _check_rows(top, acts, tokens, lengths, oids) > 0
    # the sample list is long enough to hold every positive occurrence of the batch
    assert _check_rows(sample, acts, tokens, lengths, oids) == int((acts > 0).sum())
    np.testing.assert_array_equal(top.keys, 0)


def test_a_second_batch_pushes_out_what_its_better_windows_replace():
    acc = _accumulator(5, top_k=1, n_samples=2)
    acts, tokens, oids, lengths = _batch(seed=1)
    acc.update(acts, tokens, oids, lengths)
    before = acc.top_oid.clone()
    louder = acts * 10
    later = oids + occurrence_id(100, 0, 0)  # a later document
    (top, sample), (gone_top, _) = acc.update(louder, tokens, later, lengths)
    _check_rows(top, louder, tokens, lengths, later)
    _check_rows(sample, louder, tokens, lengths, later)
    replaced = sorted(int(f) for f in gone_top.features)
    assert replaced == sorted(int(f) for f in top.features)
    assert all(int(o) == int(before[f, 0]) for f, o in zip(gone_top.features, gone_top.oids))


def test_the_grouped_arguments_are_immutable():
    acts, tokens, _, lengths = _batch()
    batch = _Batch(acts, tokens, lengths)
    entering = _Entering(KIND_TOP, *(torch.zeros(1, dtype=torch.long),) * 6)
    for value, name in ((batch, "acts"), (entering, "oid")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, name, None)
