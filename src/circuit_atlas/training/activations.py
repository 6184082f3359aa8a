"""Training-time activation functions: ReLU, JumpReLU with a straight-through estimator on its
threshold, TopK and BatchTopK.

JumpReLU `a = h·1[h > θ]` has zero gradient with respect to θ almost everywhere, so θ could never
learn. Following Rajamanoharan et al. 2024 ("Jumping Ahead", JumpReLU SAEs) the backward pass
replaces the Dirac delta of the step by a rectangle kernel of width ε (the *bandwidth*):

    ∂a/∂θ := −(θ/ε)·K((h − θ)/ε),   K(u) = 1[|u| < ½],      ∂a/∂h := 1[h > θ].

The forward value is exact, so the function used at inference is the same one that was trained
(strict `>`, as in circuit-tracer). TopK / BatchTopK are trained as such and converted to JumpReLU
for inference with a threshold estimated during training (`batch_threshold`).
"""

from __future__ import annotations

import torch


class _JumpReLUFunction(torch.autograd.Function):
    """h·1[h > θ] with the rectangle-kernel pseudo-derivative for θ (see module docstring)."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(h, threshold)
        ctx.bandwidth = bandwidth
        return h * (h > threshold).to(h.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        h, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_h = grad_out * (h > threshold).to(grad_out.dtype)
        in_window = ((h - threshold).abs() < eps / 2).to(grad_out.dtype)
        grad_theta = -(threshold / eps) * in_window * grad_out
        return grad_h, _sum_to_shape(grad_theta, threshold.shape), None


def _sum_to_shape(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Undo broadcasting: θ `[L, F]` was broadcast over the token axis of h `[N, L, F]`."""
    while grad.dim() > len(shape):
        grad = grad.sum(0)
    for dim, size in enumerate(shape):
        if size == 1 and grad.shape[dim] != 1:
            grad = grad.sum(dim, keepdim=True)
    return grad


def jumprelu(h: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """JumpReLU whose threshold receives the straight-through gradient."""
    return _JumpReLUFunction.apply(h, threshold, bandwidth)


def topk_per_token(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest pre-activations of every (token, layer) row, then ReLU.

    The ReLU (absent from circuit-tracer's inference TopK) keeps trained activations non-negative,
    so the JumpReLU they are converted to (θ > 0) reproduces them.
    """
    values, indices = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))


def batch_topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    """BatchTopK (Bussmann et al. 2024): per layer keep the k·N largest values over the whole
    batch `[N, L, F]`, so the *average* L0 is k while single tokens may use more or fewer."""
    n_tokens, n_layers, n_features = pre.shape
    per_layer = pre.transpose(0, 1).reshape(n_layers, n_tokens * n_features)
    keep = min(k * n_tokens, per_layer.shape[1])
    values, indices = per_layer.topk(keep, dim=-1)
    acts = torch.zeros_like(per_layer).scatter(-1, indices, torch.relu(values))
    return acts.reshape(n_layers, n_tokens, n_features).transpose(0, 1)


@torch.no_grad()
def batch_threshold(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Per-layer threshold `[L]` at which a JumpReLU keeps on average k features per token on
    this batch: the (k·N)-th largest positive pre-activation (BatchTopK's smallest kept value).

    Used for both TopK and BatchTopK, since for TopK the per-token cut-off varies and the
    batch-level cut-off is what matches the mean L0.
    """
    n_tokens, n_layers, n_features = pre.shape
    per_layer = torch.relu(pre.detach().float()).transpose(0, 1).reshape(n_layers, -1)
    keep = min(k * n_tokens, per_layer.shape[1])
    return per_layer.topk(keep, dim=-1).values[:, -1]
