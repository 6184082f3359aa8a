"""Training-time activation functions: ReLU, JumpReLU with a straight-through estimator on its
threshold, TopK and BatchTopK.

JumpReLU `a = h·1[h > θ]` has zero gradient with respect to θ almost everywhere, so θ could never
learn. Following Rajamanoharan et al. 2024 ("Jumping Ahead", JumpReLU SAEs) the backward pass
replaces the Dirac delta of the step by a rectangle kernel of width ε (the *bandwidth*):

    ∂a/∂θ := −(θ/ε)·K((h − θ)/ε),   K(u) = 1[|u| < ½],      ∂a/∂h := 1[h > θ].

The forward value is exact, so the function used at inference is the same one that was trained
(strict `>`, as in circuit-tracer). TopK is trained exactly as circuit-tracer applies it (the k
largest pre-activations per token, no ReLU), so the exported TopK set computes what was trained.
BatchTopK's cut-off depends on the batch, so it is converted to a JumpReLU for inference with
per-feature thresholds fitted after training (`thresholds.py`; `batch_threshold` gives the
running estimate used before that).
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
    """Keep the k largest pre-activations of every (token, layer) row and zero the rest.

    No ReLU, exactly like circuit-tracer's (and our loader's) TopK, so training and the exported
    set agree bit for bit. A kept value is negative only when fewer than k pre-activations of a
    token are positive, which centred encoders make rare; it is then a genuine (negative)
    activation in both.
    """
    values, indices = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, values)


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

    The running mean of this value is BatchTopK's fallback threshold for features that the
    per-feature fit sees too rarely.
    """
    n_tokens, n_layers, n_features = pre.shape
    per_layer = torch.relu(pre.detach().float()).transpose(0, 1).reshape(n_layers, -1)
    keep = min(k * n_tokens, per_layer.shape[1])
    return per_layer.topk(keep, dim=-1).values[:, -1]
