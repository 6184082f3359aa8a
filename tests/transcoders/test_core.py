"""`Transcoders` math against hand-written formulas (docs/formats.md §4, §5.3, §5.4)."""

from __future__ import annotations

import pytest
import torch

from circuit_atlas.errors import ShapeMismatchError, TranscoderFormatError
from circuit_atlas.transcoders import Transcoders, random_transcoders
from circuit_atlas.transcoders.activations import jump_relu, top_k


def _clt_tensors(L=3, d=5, F=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        W_enc=[torch.randn(F, d, generator=g) for _ in range(L)],
        b_enc=[torch.randn(F, generator=g) for _ in range(L)],
        b_dec=[torch.randn(d, generator=g) for _ in range(L)],
        W_dec=[torch.randn(F, L - i, d, generator=g) for i in range(L)],
    )


# ----------------------------------------------------------------------------- activations


def test_jumprelu_is_strict_and_has_no_relu():
    theta = torch.tensor([0.5, 0.5, -1.0, -1.0, 0.0])
    h = torch.tensor([0.5, 0.6, -0.5, -1.0, 0.0])
    # h == θ gives 0 (strict); a negative h above a negative θ passes through unclipped
    assert torch.equal(jump_relu(h, theta), torch.tensor([0.0, 0.6, -0.5, 0.0, 0.0]))


def test_topk_keeps_negative_values_per_position():
    h = torch.tensor([[-3.0, -1.0, -2.0, -5.0], [4.0, -1.0, 2.0, 3.0]])
    out = top_k(h, 2)
    assert torch.equal(out, torch.tensor([[0.0, -1.0, -2.0, 0.0], [4.0, 0.0, 0.0, 3.0]]))


def test_encode_matches_formula_for_each_activation():
    t = _clt_tensors()
    x = torch.randn(4, 5)
    for activation, extra in [("relu", {}), ("jumprelu", {"threshold": [torch.full((7,), 0.3)] * 3}),
                              ("topk", {"k": 3})]:
        tc = Transcoders("clt", **t, activation=activation, **extra)
        h = x @ t["W_enc"][1].T + t["b_enc"][1]
        expected = {"relu": h.clamp(min=0), "jumprelu": h * (h > 0.3),
                    "topk": torch.where(h >= h.topk(3, -1).values[:, -1:], h, torch.zeros(()))}[activation]
        assert torch.allclose(tc.pre_activation(1, x), h, atol=1e-6)
        assert torch.allclose(tc.encode(1, x), expected, atol=1e-6), activation
    assert tc.encode(1, x.expand(2, 4, 5)).shape == (2, 4, 7)  # batched inputs


# ----------------------------------------------------------------------------- reconstruction


def test_clt_reconstruct_is_sum_over_earlier_sources():
    t = _clt_tensors()
    tc = Transcoders("clt", **t)
    acts = {i: torch.relu(torch.randn(4, 7)) for i in range(3)}
    for layer in range(3):
        expected = t["b_dec"][layer].clone().expand(4, 5).clone()
        for i in range(layer + 1):  # ŷ_l = Σ_{i≤l} a_i · W_dec_i[:, l−i] + b_dec_l
            expected += acts[i] @ t["W_dec"][i][:, layer - i, :]
        assert torch.allclose(tc.reconstruct(layer, acts, torch.randn(4, 5)), expected, atol=1e-5)
    assert list(tc.target_layers(1)) == [1, 2] and list(tc.source_layers(1)) == [0, 1]


def test_plt_reconstruct_with_skip_uses_transposed_w_skip():
    g = torch.Generator().manual_seed(4)
    F, d = 6, 4
    W_dec, b_dec, W_skip = torch.randn(F, d, generator=g), torch.randn(d, generator=g), torch.randn(d, d, generator=g)
    tc = Transcoders("plt", W_enc=[torch.randn(F, d, generator=g)], b_enc=[torch.zeros(F)], b_dec=[b_dec],
                     W_dec=[W_dec], W_skip=[W_skip])
    a, x = torch.relu(torch.randn(3, F, generator=g)), torch.randn(3, d, generator=g)
    expected = a @ W_dec + b_dec + x @ W_skip.T  # W_skip stored [d_out, d_in]
    assert torch.allclose(tc.reconstruct(0, {0: a}, x), expected, atol=1e-5)
    assert list(tc.target_layers(0)) == [0]
    with pytest.raises(ShapeMismatchError, match="x_in"):
        tc.reconstruct(0, {0: a})


def test_sparse_and_dense_activations_decode_alike():
    tc = random_transcoders("clt", 3, 8, 40, seed=5)
    acts = {i: tc.encode(i, torch.randn(6, 8)) for i in range(3)}
    sparse = {i: a.to_sparse() for i, a in acts.items()}
    for layer in range(3):
        assert torch.allclose(tc.reconstruct(layer, acts), tc.reconstruct(layer, sparse), atol=1e-5)


def test_decoder_and_encoder_rows():
    t = _clt_tensors()
    tc = Transcoders("clt", **t)
    idx = torch.tensor([6, 0, 3, 3])
    assert torch.equal(tc.encoder_rows(2, idx), t["W_enc"][2][idx])
    assert torch.equal(tc.decoder_rows(0, idx, 2), t["W_dec"][0][idx, 2])
    assert torch.equal(tc.decoder_rows_all(1, idx), t["W_dec"][1][idx])
    with pytest.raises(ShapeMismatchError, match="target_layer 0"):
        tc.decoder_rows(1, idx, 0)
    with pytest.raises(ShapeMismatchError, match="feature index 7"):
        tc.decoder_rows(1, [7], 1)
    with pytest.raises(ShapeMismatchError, match="missing \\[1\\]"):
        tc.reconstruct(2, {0: torch.zeros(1, 7), 2: torch.zeros(1, 7)})


def test_skip_is_differentiable_for_frozen_forward():
    tc = random_transcoders("plt", 2, 6, 12, skip=True, seed=1)
    x = torch.randn(3, 6, requires_grad=True)
    (grad,) = torch.autograd.grad(tc.skip(1, x).sum(), x)
    assert torch.allclose(grad, tc.skip_weight(1).sum(0).expand(3, 6), atol=1e-6)
    assert random_transcoders("plt", 2, 6, 12).skip(0, x) is None


# ----------------------------------------------------------------------------- construction


def test_constructor_rejects_inconsistent_shapes_and_activation():
    t = _clt_tensors()
    bad = dict(t, b_enc=[t["b_enc"][0], torch.zeros(8), t["b_enc"][2]])
    with pytest.raises(ShapeMismatchError, match="layer 1: b_enc has shape \\[8\\]"):
        Transcoders("clt", **bad)
    with pytest.raises(ShapeMismatchError, match="targets=3"):
        Transcoders("plt", **t)  # CLT-shaped decoders declared as PLT
    with pytest.raises(TranscoderFormatError, match="threshold"):
        Transcoders("clt", **t, activation="jumprelu")
    with pytest.raises(TranscoderFormatError, match="k"):
        Transcoders("clt", **t, activation="topk")


def test_validate_against_and_to():
    tc = random_transcoders("clt", 3, 8, 16, activation="jumprelu", skip=True)
    tc.validate_against(3, 8)
    with pytest.raises(ShapeMismatchError, match="n_layers=4"):
        tc.validate_against(4, 8, "toy")
    x = torch.randn(2, 8)
    before = tc.encode(2, x)
    tc.to(dtype=torch.float64)
    assert tc.dtype == torch.float64 and tc.threshold(0).dtype == torch.float64
    assert tc.decoder_rows(0, [1], 2).dtype == torch.float64
    assert torch.allclose(tc.encode(2, x).float(), before, atol=1e-5)
    with pytest.raises(TranscoderFormatError):
        tc.to(dtype=torch.int32)


def test_random_transcoders_are_seeded_and_active():
    a = random_transcoders("clt", 2, 16, 64, activation="jumprelu", seed=3)
    b = random_transcoders("clt", 2, 16, 64, activation="jumprelu", seed=3)
    c = random_transcoders("clt", 2, 16, 64, activation="jumprelu", seed=4)
    assert torch.equal(a.encoder_weight(1), b.encoder_weight(1))
    assert not torch.equal(a.encoder_weight(1), c.encoder_weight(1))
    frac = (a.encode(0, torch.randn(50, 16)) > 0).float().mean()
    assert 0.15 < frac < 0.7
    assert random_transcoders("plt", 1, 8, 32, activation="topk").k == 4


def test_silent_features_reconstruct_to_bias_plus_skip():
    tc = random_transcoders("clt", 3, 6, 10, skip=True, seed=2)
    x = torch.randn(2, 6)
    zeros = {i: torch.zeros(2, 10) for i in range(3)}
    assert torch.allclose(tc.reconstruct(2, zeros, x), tc.decoder_bias(2) + x @ tc.skip_weight(2).T, atol=1e-6)
