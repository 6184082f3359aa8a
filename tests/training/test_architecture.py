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


def test_topk_is_exported_as_topk():
    stack = _stack("plt", "topk", k=2)
    w = stack.export_weights()
    assert (w.activation, w.k, w.threshold) == ("topk", 2, None)


def test_batchtopk_exports_fitted_thresholds_once_fitted():
    stack = _stack("plt", "batchtopk", k=2)
    w = stack.export_weights()  # not fitted yet: the running estimate for every feature
    torch.testing.assert_close(w.threshold, stack.threshold_estimate[:, None].expand(3, 7))
    fitted = torch.rand(3, 7)
    with torch.no_grad():
        stack.feature_threshold.copy_(fitted)
        stack.feature_threshold_fitted.fill_(True)
    torch.testing.assert_close(stack.export_weights().threshold, fitted)


@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_decoder_normalisation_keeps_unit_rows_and_projects_gradients(kind):
    stack = TranscoderStack(ArchitectureConfig(kind=kind, n_layers=3, d_model=5, n_features=7,
                                               activation="topk", k=2,
                                               normalize_decoder=True), seed=0)
    stack.normalize_decoder_rows()
    torch.testing.assert_close(stack.decoder_norms(), torch.ones(3, 7))
    out = stack(torch.randn(9, 3, 5))
    out.recon.pow(3).sum().backward()
    stack.project_decoder_gradients()
    for param in stack.decoder_parameters():  # each row's gradient is orthogonal to the row
        rows = param.detach().reshape(param.shape[0], -1) if kind == "clt" else param.detach()
        grads = param.grad.reshape(rows.shape)
        assert ((rows * grads).sum(-1).abs() <= 1e-6 * (1 + grads.norm(dim=-1))).all()
        assert grads.abs().max() > 1e-3
