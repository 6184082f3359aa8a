"""Evaluation metrics against an independent computation with plain transformers hooks."""

import torch

from circuit_atlas.training.evaluate import evaluate_transcoders
from circuit_atlas.transcoders import random_transcoders


def _batches():
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(4, 100, (3, 10), generator=gen) for _ in range(2)]


def _hf_loss(lm, tokens, replace=None):
    """Mean next-token NLL from the HF model, optionally replacing every MLP's output with
    `replace(layer, mlp_input, mlp_output)` through forward hooks (no circuit-atlas code)."""
    handles = []
    if replace is not None:
        for layer, block in enumerate(lm.hf_model.model.layers):
            def hook(module, args, output, layer=layer):
                return replace(layer, args[0], output)
            handles.append(block.mlp.register_forward_hook(hook))
    try:
        with torch.no_grad():
            logits = lm.hf_model(tokens).logits
    finally:
        for h in handles:
            h.remove()
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    return -logp.gather(-1, tokens[:, 1:, None]).mean().item()


def test_losses_and_layer_metrics_match_independent_computation(tiny_lm):
    tc = random_transcoders("clt", 2, 16, 24, activation="jumprelu", seed=1,
                            input_hook="mlp.hook_in", output_hook="mlp.hook_out")
    batches = _batches()
    report = evaluate_transcoders(tiny_lm, tc, batches, progress=False)

    def replacement(layer, x, y, acts):
        a = tc.encode(layer, x)
        a[:, 0] = 0
        acts[layer] = a
        recon = sum(acts[s] @ tc.decoder_rows(s, torch.arange(24), layer) for s in range(layer + 1))
        recon = recon + tc.decoder_bias(layer)
        recon[:, 0] = y[:, 0]
        return recon

    def zero(layer, x, y):
        out = torch.zeros_like(y)
        out[:, 0] = y[:, 0]
        return out

    orig, repl, zeroed = [], [], []
    for tokens in batches:
        orig.append(_hf_loss(tiny_lm, tokens))
        acts = {}
        repl.append(_hf_loss(tiny_lm, tokens, lambda l, x, y: replacement(l, x, y, acts)))
        zeroed.append(_hf_loss(tiny_lm, tokens, zero))

    def mean(values):  # equal batch sizes, so the mean of batch means is the overall mean
        return sum(values) / len(values)

    assert abs(report.ce_original - mean(orig)) < 1e-5
    assert abs(report.ce_replacement - mean(repl)) < 1e-5
    assert abs(report.ce_zero_ablation - mean(zeroed)) < 1e-5
    expected_recovered = (mean(zeroed) - mean(repl)) / (mean(zeroed) - mean(orig))
    assert abs(report.loss_recovered - expected_recovered) < 1e-4

    # per-layer metrics from the clean pass, positions ≥ 1
    xs, ys = {0: [], 1: []}, {0: [], 1: []}
    for tokens in batches:
        def grab(layer, x, y):
            xs[layer].append(x[:, 1:].reshape(-1, 16))
            ys[layer].append(y[:, 1:].reshape(-1, 16))
            return y
        _hf_loss(tiny_lm, tokens, grab)
    acts = {s: tc.encode(s, torch.cat(xs[s])) for s in range(2)}
    for layer in range(2):
        y = torch.cat(ys[layer])
        recon = tc.reconstruct(layer, acts, torch.cat(xs[layer]))
        err = ((y - recon) ** 2).sum()
        assert abs(report.layers[layer].nmse - (err / (y ** 2).sum()).item()) < 1e-5
        assert abs(report.layers[layer].fvu - (err / ((y - y.mean(0)) ** 2).sum()).item()) < 1e-5
        assert abs(report.layers[layer].l0 - (acts[layer] > 0).sum(-1).float().mean().item()) < 1e-5
        dead = 1 - (acts[layer] > 0).any(0).float().mean().item()
        assert abs(report.layers[layer].dead_fraction - dead) < 1e-9
    table = report.table()
    assert "loss recovered" in table and "NMSE" in table and len(table.splitlines()) == 7


def test_zero_transcoders_recover_nothing(tiny_lm):
    from circuit_atlas.transcoders import Transcoders

    tc = Transcoders("plt", W_enc=[torch.randn(8, 16) for _ in range(2)],
                     b_enc=[torch.zeros(8)] * 2, b_dec=[torch.zeros(16)] * 2,
                     W_dec=[torch.zeros(8, 16)] * 2, input_hook="mlp.hook_in",
                     output_hook="mlp.hook_out")
    report = evaluate_transcoders(tiny_lm, tc, _batches(), progress=False)
    assert report.ce_replacement == report.ce_zero_ablation
    assert report.loss_recovered == 0.0
