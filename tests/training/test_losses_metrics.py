"""Loss terms and metrics against direct computations."""

import math

import torch

from circuit_atlas.training.architecture import StackOutput
from circuit_atlas.training.losses import (l1_sparsity, preact_loss, reconstruction_loss,
                                           tanh_sparsity)
from circuit_atlas.training.metrics import DeadTracker, MetricSums
from circuit_atlas.training.schedules import learning_rate, sparsity_coefficient
from circuit_atlas.training.config import OptimConfig


def _out(N=5, L=2, F=3, d=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pre = torch.randn(N, L, F, generator=gen)
    return StackOutput(pre=pre, acts=torch.relu(pre), recon=torch.randn(N, L, d, generator=gen),
                       decoder_norms=torch.rand(L, F, generator=gen) + 0.5)


def test_loss_terms_match_explicit_sums():
    out = _out()
    y = torch.randn(5, 2, 4)
    N, L, F, d = 5, 2, 3, 4
    rec = sum(((out.recon[n, l] - y[n, l]) ** 2).sum() for n in range(N) for l in range(L))
    torch.testing.assert_close(reconstruction_loss(out.recon, y), rec / N / d)
    tanh = sum(math.tanh(2.0 * out.acts[n, l, f] * out.decoder_norms[l, f] / 2.0)
               for n in range(N) for l in range(L) for f in range(F)) / N
    torch.testing.assert_close(tanh_sparsity(out, 2.0).item(), tanh, rtol=1e-6, atol=1e-6)
    l1 = sum(out.acts[n, l, f] * out.decoder_norms[l, f]
             for n in range(N) for l in range(L) for f in range(F)) / N / 2.0
    torch.testing.assert_close(l1_sparsity(out), l1)
    theta = torch.full((L, F), 0.3)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    pa = sum(max(0.3 - out.pre[n, l, f].item(), 0.0) * out.decoder_norms[l, f].item()
             for n in range(N) for l in range(L) for f in range(F) if mask[l, f]) / N / 2.0
    assert abs(preact_loss(out, theta, mask).item() - pa) < 1e-6


def test_metric_sums_combine_exactly_and_match_direct_fvu():
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(10, 2, 4, generator=gen) + 1.0
    r = y + 0.3 * torch.randn(10, 2, 4, generator=gen)
    acts = torch.relu(torch.randn(10, 2, 6, generator=gen))
    whole = MetricSums.from_batch(r, y, acts)
    parts = MetricSums.from_batch(r[:4], y[:4], acts[:4]).add(
        MetricSums.from_batch(r[4:], y[4:], acts[4:]))
    for layer in range(2):
        err = ((y[:, layer] - r[:, layer]) ** 2).sum()
        var = ((y[:, layer] - y[:, layer].mean(0)) ** 2).sum()
        assert abs(whole.fvu()[layer] - (err / var).item()) < 1e-6
        assert abs(parts.fvu()[layer] - whole.fvu()[layer]) < 1e-9
        assert abs(whole.nmse()[layer] - (err / (y[:, layer] ** 2).sum()).item()) < 1e-6
        assert whole.l0()[layer] == (acts[:, layer] > 0).sum(-1).double().mean().item()


def test_dead_tracker_counts_tokens_since_last_fire():
    tracker = DeadTracker(1, 3, dead_after=20)
    fire_first = torch.tensor([[[1.0, 0.0, 0.0]]])
    tracker.update(fire_first, 10)
    tracker.update(torch.zeros(1, 1, 3), 10)
    assert tracker.since_fired.tolist() == [[10, 20, 20]]
    assert tracker.dead_mask().tolist() == [[False, True, True]]
    assert abs(tracker.dead_fraction()[0] - 2 / 3) < 1e-12


def test_schedules():
    cfg = OptimConfig(steps=100, lr=1.0, lr_warmup_steps=10, lr_decay_fraction=0.2,
                      sparsity_coefficient=2.0, sparsity_warmup_steps=50)
    assert learning_rate(0, cfg) == 0.1 and learning_rate(9, cfg) == 1.0
    assert learning_rate(79, cfg) == 1.0 and learning_rate(80, cfg) == 1.0
    assert learning_rate(90, cfg) == 0.5 and learning_rate(99, cfg) == 0.05
    assert sparsity_coefficient(24, cfg) == 1.0 and sparsity_coefficient(70, cfg) == 2.0


def _topk_stack(seed=0):
    from circuit_atlas.training.architecture import TranscoderStack
    from circuit_atlas.training.config import ArchitectureConfig

    return TranscoderStack(ArchitectureConfig(kind="plt", n_layers=2, d_model=4, n_features=6,
                                              activation="topk", k=2), seed=seed)


def test_auxk_matches_brute_force_and_feeds_only_dead_features():
    from circuit_atlas.training.losses import auxk_loss

    stack = _topk_stack()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(5, 2, 4, generator=gen), torch.randn(5, 2, 4, generator=gen)
    dead = torch.tensor([[True, False, True, True, False, False],
                         [False, False, False, False, True, False]])
    out = stack(x)
    loss = auxk_loss(stack, out, y, dead, k_aux=2)
    # brute force: per token and layer, the 2 largest pre-activations among dead features
    residual = (y - out.recon).detach()
    err, norm = 0.0, 0.0
    for n in range(5):
        est = torch.zeros(2, 4)
        for layer in range(2):
            cand = [(out.pre[n, layer, f].item(), f) for f in range(6) if dead[layer, f]]
            for value, f in sorted(cand, reverse=True)[:2]:
                est[layer] += max(value, 0.0) * stack.W_dec[layer, f].detach()
        err += ((est - residual[n]) ** 2).sum().item()
        norm += (residual[n] ** 2).sum().item()
    assert abs(loss.item() - err / norm) < 1e-5
    loss.backward()
    grad_rows = stack.W_enc.grad.norm(dim=-1)
    assert (grad_rows[~dead] == 0).all()           # live features get nothing from AuxK
    assert (grad_rows[dead] > 0).sum() >= 3        # dead ones that were picked do


def test_preact_loss_pushes_silent_features_towards_their_threshold():
    from circuit_atlas.training.architecture import StackOutput

    pre = torch.tensor([[[-1.0, 0.5, 2.0]]])
    b_enc = torch.zeros(1, 3, requires_grad=True)
    out = StackOutput(pre=pre + b_enc, acts=torch.relu(pre), recon=torch.zeros(1, 1, 4),
                      decoder_norms=torch.ones(1, 3))
    preact_loss(out, torch.full((1, 3), 1.0)).backward()
    # below θ=1: gradient −‖W_dec‖/√d = −0.5 (descent raises b_enc); above θ: none
    assert b_enc.grad.tolist() == [[-0.5, -0.5, 0.0]]
