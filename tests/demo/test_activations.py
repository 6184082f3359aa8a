"""Per-line MLP pairs of the demo model, checked against plain transformers forward hooks."""

from __future__ import annotations

import pytest
import torch

from circuit_atlas.demo import bundle
from circuit_atlas.demo.activations import encode_lines, equal_length_batches, line_activations
from circuit_atlas.errors import PromptError
from circuit_atlas.models import load_language_model

LINES = ["dallas is in texas", "the capital of ohio is columbus", "43+71=114",
         "the capital of the region containing waco is austin", "alice plays golf", "fresno is in california"]


@pytest.fixture(scope="module")
def lm():
    torch.set_num_threads(1)
    return load_language_model(str(bundle.demo_model_path()), device="cpu")


def _hf_pairs(hf, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """resid_mid = input of post_attention_layernorm, mlp_out = output of the MLP, by HF hooks."""
    xs, ys, handles = {}, {}, []
    for i, layer in enumerate(hf.model.layers):
        handles.append(layer.post_attention_layernorm.register_forward_hook(
            lambda m, inp, out, i=i: xs.__setitem__(i, inp[0][0])))
        handles.append(layer.mlp.register_forward_hook(lambda m, inp, out, i=i: ys.__setitem__(i, out[0])))
    try:
        with torch.no_grad():
            hf(input_ids=torch.tensor([ids]))
    finally:
        for h in handles:
            h.remove()
    return torch.stack([xs[i] for i in range(len(xs))], 1), torch.stack([ys[i] for i in range(len(ys))], 1)


def test_pairs_match_hf_hooks_line_by_line(lm):
    ids = encode_lines(lm.tokenizer, LINES)
    x, y = line_activations(lm, ids, input_hook="hook_resid_mid", output_hook="hook_mlp_out",
                            batch_size=2, progress=False)
    # the expected rows: each line alone, BOS position dropped, in equal_length_batches order
    order = [seq for batch in equal_length_batches(ids, 2) for seq in batch.tolist()]
    pairs = [_hf_pairs(lm.hf_model, seq) for seq in order]
    want_x = torch.cat([p[0][1:] for p in pairs])
    want_y = torch.cat([p[1][1:] for p in pairs])
    assert x.shape == (sum(len(s) - 1 for s in ids), lm.n_layers, lm.d_model)
    torch.testing.assert_close(x, want_x, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y, want_y, rtol=1e-4, atol=1e-5)


def test_batches_hold_one_length_each_and_lose_nothing():
    seqs = [[1, 2], [1, 2, 3], [1, 5], [1, 6, 7], [1, 8]]
    batches = list(equal_length_batches(seqs, 2))
    assert [b.shape for b in batches] == [(2, 2), (1, 2), (2, 3)]
    assert sorted(map(tuple, (r for b in batches for r in b.tolist()))) == sorted(map(tuple, seqs))


def test_unknown_word_is_refused_by_name(lm):
    with pytest.raises(PromptError, match="zanzibar"):
        encode_lines(lm.tokenizer, ["dallas is in zanzibar"])
