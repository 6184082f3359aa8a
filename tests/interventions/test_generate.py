"""Steered generation with the KV cache.

The steering case is built to depend on one feature: in a transcoder set written here, feature
`ALIGNED` of the last layer decodes to `W_U[token] / gain` (gain = the final norm's weight), so a
large value makes `token` the argmax; feature `SILENT` has a zero decoder. Cached generation is
also compared with a greedy loop that recomputes the whole sequence with `lm.forward` each step.
"""

from __future__ import annotations

import math

import pytest
import torch

import circuit_atlas
from circuit_atlas.errors import InterventionError
from circuit_atlas.interventions import Intervention, generate, intervene
from circuit_atlas.interventions.generate import sample_token
from circuit_atlas.models.tiny import tiny_language_model
from circuit_atlas.transcoders import Transcoders

N_LAYERS, D_MODEL, N_FEATURES = 2, 32, 24
ALIGNED, SILENT = 5, 6


@pytest.fixture(scope="module")
def steering_model():
    lm = tiny_language_model("llama", seed=11, n_layers=N_LAYERS, d_model=D_MODEL)
    g = torch.Generator().manual_seed(2)
    W_enc = [torch.randn(N_FEATURES, D_MODEL, generator=g) / math.sqrt(D_MODEL) for _ in range(N_LAYERS)]
    b_enc = [torch.zeros(N_FEATURES) for _ in range(N_LAYERS)]
    b_dec = [torch.zeros(D_MODEL) for _ in range(N_LAYERS)]
    W_dec = [torch.randn(N_FEATURES, D_MODEL, generator=g) / math.sqrt(N_FEATURES) for _ in range(N_LAYERS)]
    tokenizer = lm.tokenizer
    token = tokenizer.convert_tokens_to_ids("Paris")
    gain = lm.hf_model.model.norm.weight.detach()
    direction = lm.unembedding.detach()[token] / gain
    W_dec[-1][ALIGNED] = (direction / direction.norm()).cpu()
    W_dec[-1][SILENT] = 0
    tc = Transcoders("plt", W_enc=W_enc, b_enc=b_enc, b_dec=b_dec, W_dec=W_dec,
                     input_hook="hook_resid_mid", output_hook="hook_mlp_out")
    return circuit_atlas.load(lm, tc), token


PROMPT = "the capital of Italy is"


def test_aligned_clamp_steers_every_generated_token(steering_model) -> None:
    model, token = steering_model
    steer = Intervention(N_LAYERS - 1, None, ALIGNED, value=300.0)
    result = generate(model, PROMPT, [steer], max_new_tokens=6)
    assert token not in result.default.token_ids  # the default continuation avoids it
    assert result.steered.token_ids == [token] * 6
    assert result.steered.text.split() == ["Paris"] * 6
    assert result.steered.full_text.startswith(result.prompt)
    assert result.default.logits.shape == (6, model.lm.vocab_size)


def test_generated_only_clamp_leaves_the_first_token(steering_model) -> None:
    """slice(P, None) covers only generated positions: the prompt pass, hence the first new token,
    is untouched; from then on every token is steered (the clamp is applied at each cached step)."""
    model, token = steering_model
    length = model.tokenize(PROMPT).shape[0]
    steer = Intervention(N_LAYERS - 1, slice(length, None), ALIGNED, value=300.0)
    result = generate(model, PROMPT, [steer], max_new_tokens=5)
    assert result.steered.token_ids[0] == result.default.token_ids[0] != token
    assert result.steered.token_ids[1:] == [token] * 4


def test_steering_without_effect_changes_nothing(steering_model) -> None:
    model, _ = steering_model
    silent = Intervention(N_LAYERS - 1, None, SILENT, value=300.0)
    result = generate(model, PROMPT, [silent], max_new_tokens=6)
    assert result.steered.token_ids == result.default.token_ids
    torch.testing.assert_close(result.steered.logits, result.default.logits)


def _recomputed_greedy(model, ids, n_new, layer=None, feature=None, value=None):
    """Greedy decoding by re-running the full sequence (no cache), clamping by hand."""
    tc = model.transcoders

    def edit(l, x_in, y_out):
        if l != layer:
            return y_out
        current = tc.encode(l, x_in[0])[:, feature]
        delta = value - current
        delta[0] = 0  # BOS position holds no features
        return y_out + (delta[:, None] * tc.decoder_rows(l, torch.tensor([feature]), l)[0])[None]

    seq = ids.clone()
    for _ in range(n_new):
        record = model.lm.forward(seq[None], input_hook=model.input_hook, output_hook=model.output_hook,
                                  output_edit=None if layer is None else edit, record_internals=False)
        seq = torch.cat([seq, record.logits[0, -1].argmax()[None]])
    return seq[len(ids):].tolist()


def test_cached_generation_matches_full_recomputation(steering_model) -> None:
    model, _ = steering_model
    ids = model.tokenize(PROMPT)
    steer = Intervention(0, None, 3, value=6.0)
    result = generate(model, ids, [steer], max_new_tokens=8, stop_at_eos=False)
    assert result.default.token_ids == _recomputed_greedy(model, ids, 8)
    expected = _recomputed_greedy(model, ids, 8, layer=0, feature=3, value=6.0)
    assert result.steered.token_ids == expected
    assert expected != result.default.token_ids  # the check would catch a clamp applied to the prompt only


def test_same_seed_same_output_and_sampling(steering_model) -> None:
    model, _ = steering_model
    steer = Intervention(0, slice(2, None), 3, scale=3.0)
    kwargs = dict(max_new_tokens=10, temperature=1.5, top_p=0.95, stop_at_eos=False)
    one = generate(model, PROMPT, [steer], seed=7, **kwargs)
    two = generate(model, PROMPT, [steer], seed=7, **kwargs)
    assert one.default.token_ids == two.default.token_ids
    assert one.steered.token_ids == two.steered.token_ids
    others = {tuple(generate(model, PROMPT, [steer], seed=s, **kwargs).default.token_ids) for s in range(4)}
    assert len(others) > 1  # sampling really samples


def test_sample_token_rules() -> None:
    logits = torch.tensor([0.0, 3.0, 2.9, -1.0])
    g = torch.Generator().manual_seed(0)
    assert sample_token(logits, 0.0, 1.0, g) == 1
    assert {sample_token(logits, 1.0, 0.01, g) for _ in range(20)} == {1}  # nucleus of one token
    draws = [sample_token(logits, 1.0, 0.9, g) for _ in range(200)]
    assert set(draws) == {1, 2}  # token 0 lies outside the 0.9 nucleus
    draws = [sample_token(logits, 100.0, 1.0, g) for _ in range(400)]
    assert set(draws) == {0, 1, 2, 3}


def test_eos_stops_generation(steering_model) -> None:
    model, _ = steering_model
    eos = model.tokenizer.eos_token_id
    result = generate(model, PROMPT, max_new_tokens=4)
    assert eos not in result.default.token_ids
    # a copy of the set whose aligned feature points at <eos> instead
    tc = model.transcoders
    gain = model.lm.hf_model.model.norm.weight.detach()
    direction = model.lm.unembedding.detach()[eos] / gain
    W_dec = [tc.decoder_rows(l, torch.arange(N_FEATURES), l).clone() for l in range(N_LAYERS)]
    W_dec[-1][ALIGNED] = direction / direction.norm()
    eos_tc = Transcoders("plt", W_enc=[tc.encoder_weight(l) for l in range(N_LAYERS)],
                         b_enc=[tc.encoder_bias(l) for l in range(N_LAYERS)],
                         b_dec=[tc.decoder_bias(l) for l in range(N_LAYERS)], W_dec=W_dec,
                         input_hook=tc.input_hook, output_hook=tc.output_hook)
    eos_model = circuit_atlas.load(model.lm, eos_tc)
    steered = generate(eos_model, PROMPT, Intervention(N_LAYERS - 1, -1, ALIGNED, value=300.0), max_new_tokens=4)
    assert steered.steered.token_ids == [eos]
    assert steered.default.token_ids == result.default.token_ids


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_new_tokens=-1), "max_new_tokens must be a non-negative int"),
        (dict(temperature=float("nan")), "temperature must be a finite number"),
        (dict(top_p=0.0), r"top_p must lie in \(0, 1\]"),
        (dict(max_new_tokens=100), "exceeds the 64 positions"),
    ],
)
def test_bad_generation_settings(steering_model, kwargs, message) -> None:
    model, _ = steering_model
    with pytest.raises(InterventionError, match=message):
        generate(model, PROMPT, [], **kwargs)


def test_generated_positions_count_for_range_checks(steering_model) -> None:
    model, _ = steering_model
    length = model.tokenize(PROMPT).shape[0]
    with pytest.raises(InterventionError, match="selects no position of the prompt or the generated tokens"):
        generate(model, PROMPT, Intervention(0, slice(length + 5, None), 3, value=1.0), max_new_tokens=3)


def test_cached_clt_steering_matches_recomputation_with_sliding_window() -> None:
    """Gemma-2 (sliding window 4, soft-caps) with a CLT and skips: the cached steered loop must
    equal recomputing the sequence with the feature's delta written into every later layer."""
    from .conftest import build_model

    model = build_model("gemma2-clt-skip")
    tc = model.transcoders
    ids = model.tokenize("the capital of Italy is")
    layer, feature, value = 0, 9, 8.0
    state = {}

    def edit(l, x_in, y_out):
        if l == layer:
            delta = value - tc.encode(l, x_in[0])[:, feature]
            delta[0] = 0
            state["delta"] = delta
        if l < layer:
            return y_out
        return y_out + (state["delta"][:, None] * tc.decoder_rows(layer, torch.tensor([feature]), l)[0])[None]

    seq = ids.clone()
    for _ in range(7):
        record = model.lm.forward(seq[None], input_hook=model.input_hook, output_hook=model.output_hook,
                                  output_edit=edit, record_internals=False)
        seq = torch.cat([seq, record.logits[0, -1].argmax()[None]])
    result = generate(model, ids, Intervention(layer, None, feature, value=value), max_new_tokens=7,
                      stop_at_eos=False)
    assert result.steered.token_ids == seq[len(ids):].tolist()
    assert result.steered.token_ids != result.default.token_ids


def test_results_print_readably(steering_model) -> None:
    """Printing a result in a notebook shows its text and top tokens, not pages of logits."""
    model, _ = steering_model
    steered = generate(model, PROMPT, [], 4)
    assert "text=" in repr(steered) and "tensor([[" not in repr(steered) and len(repr(steered)) < 2000
    result = intervene(model, PROMPT, [])
    assert "top_after=" in repr(result) and len(repr(result)) < 5000
