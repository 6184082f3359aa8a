"""GemmaScope layouts (docs/formats.md §6): transposed encoders and skips, the CLT off-by-one."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from circuit_atlas.errors import TranscoderFormatError
from circuit_atlas.transcoders import load_transcoders


def test_npz_encoder_is_transposed(make_gemmascope_npz):
    root, raw = make_gemmascope_npz()
    tc = load_transcoders(str(root))
    assert (tc.kind, tc.activation_name, tc.input_hook) == ("plt", "jumprelu", "ln2.hook_normalized")
    x = np.random.default_rng(0).normal(size=(4, raw.d)).astype(np.float32)
    for layer, p in enumerate(raw.layers):
        h = x @ p["W_enc"] + p["b_enc"]  # file W_enc is [d, F]: x · W_enc, no transpose
        a = h * (h > p["threshold"])
        y = a @ p["W_dec"] + p["b_dec"]
        got = tc.encode(layer, torch.from_numpy(x))
        assert np.allclose(got.numpy(), a, atol=1e-5)
        assert np.allclose(tc.reconstruct(layer, {layer: got}).numpy(), y, atol=1e-5)
        assert np.allclose(tc.encoder_rows(layer, [2])[0].numpy(), p["W_enc"][:, 2])


def test_gemmascope2_plt_affine_skip_applies_untransposed(make_gemmascope2):
    root, raw = make_gemmascope2("plt")
    for lazy in (True, False):
        tc = load_transcoders(str(root), lazy_decoder=lazy)
        x = torch.randn(3, raw.d)
        for layer, t in enumerate(raw.files):
            h = x @ t["w_enc"] + t["b_enc"]
            a = h * (h > t["threshold"])
            y = a @ t["w_dec"] + t["b_dec"] + x @ t["affine_skip_connection"]  # §6.2: x · affine
            assert torch.allclose(tc.skip(layer, x), x @ t["affine_skip_connection"], atol=1e-5)
            assert torch.allclose(tc.reconstruct(layer, {layer: tc.encode(layer, x)}, x), y, atol=1e-5)


def test_gemmascope2_clt_reads_all_listed_layers(make_gemmascope2):
    root, raw = make_gemmascope2("clt", L=3)
    eager = load_transcoders(str(root), lazy_decoder=False)
    lazy = load_transcoders(str(root))
    assert eager.n_layers == 3 and lazy.lazy_decoder  # circuit-tracer would read only 2 (§6.3)
    xs = [torch.randn(4, raw.d) for _ in range(3)]
    acts = {}
    for i, t in enumerate(raw.files):
        h = xs[i] @ t["w_enc"] + t["b_enc"]
        acts[i] = h * (h > t["threshold"])
    for layer in range(3):
        # ŷ_l = Σ_{i≤l} a_i · w_dec_i[:, l] + b_dec_l + x_l · affine_l  (w_dec_i holds all L targets)
        y = raw.files[layer]["b_dec"] + xs[layer] @ raw.files[layer]["affine_skip_connection"]
        y = y + sum(acts[i] @ raw.files[i]["w_dec"][:, layer] for i in range(layer + 1))
        for tc in (eager, lazy):
            assert torch.allclose(tc.reconstruct(layer, acts, xs[layer]), y, atol=1e-5)
    assert torch.equal(lazy.decoder_rows(1, [5, 0], 2), raw.files[1]["w_dec"][[5, 0], 2])


def test_gemmascope2_clt_list_length(make_gemmascope2, tmp_path):
    root, _ = make_gemmascope2("clt", L=3, n_listed=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_transcoders(str(root)).n_layers == 3
    assert any("using the first 3" in str(w.message) for w in caught)
    (root / "config.yaml").write_text((root / "config.yaml").read_text().replace(
        "- params_layer_2.safetensors\n", "", 2))
    with pytest.raises(TranscoderFormatError, match="missing layer file"):
        load_transcoders(str(root))


def test_npz_missing_threshold_is_named(make_gemmascope_npz):
    root, raw = make_gemmascope_npz(L=1)
    path = root / "layer_0/width_16k/average_l0_7/params.npz"
    arrays = dict(raw.layers[0])
    del arrays["threshold"]
    np.savez(path, **arrays)
    with pytest.raises(TranscoderFormatError, match="params.npz.*'threshold'"):
        load_transcoders(str(root))
