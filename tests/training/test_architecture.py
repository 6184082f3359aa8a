"""The stack's forward/decode against brute-force loops, and the export's scale folding."""

import pytest
import torch

from circuit_atlas.training.architecture import TranscoderStack
from circuit_atlas.training.config import ArchitectureConfig


def _stack(kind, activation="jumprelu", L=3, d=5, F=7, seed=0, k=None):
    stack = TranscoderStack(ArchitectureConfig(kind=kind, n_layers=L, d_model=d, n_features=F,
                                               activation=activation, k=k), seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in stack.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        stack.input_scale.copy_(torch.rand(L, generator=gen) + 0.5)
        stack.target_scale.copy_(torch.rand(L, generator=gen) + 0.5)
        stack.threshold_estimate.copy_(torch.rand(L, generator=gen))
    return stack


def test_clt_decode_matches_loop_over_source_and_target_layers():
    stack = _stack("clt")
    L, F, d = 3, 7, 5
    acts = torch.relu(torch.randn(4, L, F))
    got = stack.decode(acts)
    expected = torch.zeros(4, L, d)
    for t in range(L):
        for s in range(t + 1):
            expected[:, t] += acts[:, s] @ stack.W_dec[s][:, t - s, :]
        expected[:, t] += stack.b_dec[t]
    torch.testing.assert_close(got, expected)


def test_skip_plt_forward_matches_formula():
    stack = _stack("skip")
    x = torch.randn(4, 3, 5)
    out = stack(x)
    for layer in range(3):
        pre = x[:, layer] @ stack.W_enc[layer].T + stack.b_enc[layer]
        theta = stack.log_threshold[layer].exp()
        acts = pre * (pre > theta)
        recon = acts @ stack.W_dec[layer] + stack.b_dec[layer] + x[:, layer] @ stack.W_skip[layer].T
        torch.testing.assert_close(out.acts[:, layer], acts)
        torch.testing.assert_close(out.recon[:, layer], recon)


def test_clt_decoder_norm_is_norm_of_concatenation():
    stack = _stack("clt")
    norms = stack.decoder_norms()
    for s in range(3):
        for f in range(7):
            concat = torch.cat([stack.W_dec[s][f, j] for j in range(3 - s)])
            torch.testing.assert_close(norms[s, f], concat.norm())


@pytest.mark.parametrize("kind,activation", [("plt", "relu"), ("skip", "jumprelu"),
                                             ("clt", "jumprelu"), ("clt", "batchtopk")])
def test_export_on_raw_activations_matches_training_on_normalised(kind, activation):
    stack = _stack(kind, activation, k=2 if "topk" in activation else None)
    L = 3
    x_raw = torch.randn(6, L, 5) * 3
    x_norm = x_raw / stack.input_scale[None, :, None]
    pre = stack.pre_activations(x_norm)
    acts = stack.activate_inference(pre)
    y_raw_expected = stack.decode(acts, x_norm) * stack.target_scale[None, :, None]
    w = stack.export_weights()
    assert w.activation == ("relu" if activation == "relu" else "jumprelu")
    y_raw = torch.zeros(6, L, 5)
    all_acts = []
    for s in range(L):
        h = x_raw[:, s] @ w.W_enc[s].T + w.b_enc[s]
        a = torch.relu(h) if w.threshold is None else h * (h > w.threshold[s])
        all_acts.append(a)
        if kind == "clt":
            for j in range(L - s):
                y_raw[:, s + j] += a @ w.W_dec[s][:, j]
        else:
            y_raw[:, s] += a @ w.W_dec[s]
            if w.W_skip is not None:
                y_raw[:, s] += x_raw[:, s] @ w.W_skip[s].T
    y_raw += w.b_dec
    torch.testing.assert_close(torch.stack(all_acts, 1), acts, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y_raw, y_raw_expected, rtol=1e-5, atol=1e-5)


def test_topk_exports_estimated_threshold_for_every_feature():
    stack = _stack("plt", "topk", k=2)
    w = stack.export_weights()
    torch.testing.assert_close(w.threshold, stack.threshold_estimate[:, None].expand(3, 7))
