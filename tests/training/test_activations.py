"""Training activations: exact forward values and the JumpReLU straight-through estimator."""

import torch

from circuit_atlas.training.activations import (batch_threshold, batch_topk, jumprelu,
                                                topk_per_token)


def test_jumprelu_forward_is_strict_and_exact():
    h = torch.tensor([[-1.0, 0.2, 0.5, 0.7]])
    theta = torch.tensor([0.0, 0.5, 0.5, 0.5])
    out = jumprelu(h, theta, 0.1)
    assert torch.equal(out, torch.tensor([[0.0, 0.0, 0.0, 0.7]]))  # 0.5 == θ gives 0


def test_jumprelu_threshold_gradient_matches_rectangle_kernel_formula():
    gen = torch.Generator().manual_seed(0)
    h = torch.rand(50, 3, 4, generator=gen)
    theta = torch.full((3, 4), 0.5, requires_grad=True)
    g = torch.randn(50, 3, 4, generator=gen)
    eps = 0.2
    (jumprelu(h, theta, eps) * g).sum().backward()
    expected = torch.zeros(3, 4)
    for n in range(50):
        for layer in range(3):
            for f in range(4):
                if abs(h[n, layer, f] - 0.5) < eps / 2:
                    expected[layer, f] += -(0.5 / eps) * g[n, layer, f]
    torch.testing.assert_close(theta.grad, expected)


def test_jumprelu_estimator_is_consistent_with_derivative_of_expectation():
    # h ~ U(0, 2): E[h·1[h>θ]] = (4 − θ²)/4, so d/dθ = −θ/2. The STE, averaged over many
    # samples, must estimate that derivative (which autograd of the exact forward gets as 0).
    h = torch.linspace(0, 2, 200_001)[:, None, None]
    theta = torch.tensor([[0.8]], requires_grad=True)
    jumprelu(h, theta, 0.05).mean().backward()
    assert abs(theta.grad.item() - (-0.4)) < 2e-3


def test_jumprelu_input_gradient_is_the_gate():
    h = torch.tensor([[[0.1, 0.9]]], requires_grad=True)
    jumprelu(h, torch.tensor([[0.5, 0.5]]), 0.1).sum().backward()
    assert torch.equal(h.grad, torch.tensor([[[0.0, 1.0]]]))


def test_topk_per_token_matches_sorting_and_the_exported_topk():
    """Training TopK is circuit-tracer's TopK (no ReLU: a kept negative value stays), so the
    exported TopK set computes exactly what was trained."""
    from circuit_atlas.transcoders.activations import top_k

    gen = torch.Generator().manual_seed(1)
    pre = torch.randn(7, 2, 10, generator=gen)
    out = topk_per_token(pre, 3)
    for n in range(7):
        for layer in range(2):
            row = pre[n, layer]
            keep = row.argsort(descending=True)[:3]
            expected = torch.zeros(10)
            expected[keep] = row[keep]
            assert torch.equal(out[n, layer], expected)
    assert (out < 0).any()  # this draw has rows with fewer than 3 positive values
    assert torch.equal(out, top_k(pre, 3))


def test_batch_topk_keeps_k_times_n_largest_per_layer():
    gen = torch.Generator().manual_seed(2)
    pre = torch.rand(6, 2, 5, generator=gen) + 0.1  # all positive, so nothing is lost to ReLU
    out = batch_topk(pre, 2)
    for layer in range(2):
        values = pre[:, layer].flatten()
        cut = values.sort(descending=True).values[2 * 6 - 1]
        expected = torch.where(pre[:, layer] >= cut, pre[:, layer], torch.zeros(()))
        assert torch.equal(out[:, layer], expected)
        assert int((out[:, layer] > 0).sum()) == 12
    # a token may use more or fewer than k features; only the batch mean is k
    assert (out > 0).sum(-1).float().mean().item() == 2.0


def test_batch_threshold_reproduces_mean_l0_as_jumprelu():
    gen = torch.Generator().manual_seed(3)
    pre = torch.randn(100, 3, 20, generator=gen)
    theta = batch_threshold(pre, 4)
    for layer in range(3):
        active = (pre[:, layer] > theta[layer]).sum().item()  # strict: the cut value is excluded
        assert active == 4 * 100 - 1
