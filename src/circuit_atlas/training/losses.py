"""Loss terms of transcoder training, each a scalar averaged over tokens and summed over layers.

Units: targets are normalised to mean squared norm d per layer, so `reconstruction_loss`
(Σ_l mean_n ‖ŷ−y‖²/d) is roughly Σ_l FVU_l, and a feature's contribution a·‖W_dec‖/√d is measured
as a fraction of a typical target norm. Weighting sparsity by ‖W_dec‖ stops the optimiser from
shrinking activations and growing decoders to dodge the penalty (circuit-tracing paper §"CLT
training"); the tanh saturates so strong features are not pushed towards zero (an L0 surrogate
that stays differentiable through the JumpReLU estimator).
"""

from __future__ import annotations

import math

import torch

from circuit_atlas.training.architecture import StackOutput, TranscoderStack


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    d = target.shape[-1]
    return (recon - target).pow(2).sum(-1).mean(0).sum() / d


def tanh_sparsity(out: StackOutput, c: float) -> torch.Tensor:
    """mean_n Σ_{l,f} tanh(c·a·‖W_dec‖/√d)."""
    d = out.recon.shape[-1]
    return torch.tanh(c * out.acts * out.decoder_norms / math.sqrt(d)).sum((1, 2)).mean()


def l1_sparsity(out: StackOutput) -> torch.Tensor:
    """mean_n Σ_{l,f} a·‖W_dec‖/√d (decoder-norm-weighted L1, for ReLU transcoders)."""
    d = out.recon.shape[-1]
    return (out.acts * out.decoder_norms).sum((1, 2)).mean() / math.sqrt(d)


def preact_loss(out: StackOutput, threshold: torch.Tensor | None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """mean_n Σ relu(θ − h)·‖W_dec‖/√d: a gentle pull of pre-activations towards their threshold,
    so features that never fire still get a gradient (θ = 0 for ReLU; `mask` `[L, F]` limits it
    to some features, e.g. the dead ones for ReLU, where pulling all would densify)."""
    d = out.recon.shape[-1]
    theta = 0.0 if threshold is None else threshold
    weight = out.decoder_norms if mask is None else out.decoder_norms * mask
    return (torch.relu(theta - out.pre) * weight).sum((1, 2)).mean() / math.sqrt(d)


def auxk_loss(stack: TranscoderStack, out: StackOutput, target: torch.Tensor,
              dead: torch.Tensor, k_aux: int) -> torch.Tensor:
    """AuxK (Gao et al. 2024): the k_aux largest pre-activations among *dead* features must
    reconstruct the residual error y − ŷ, giving dead features a useful gradient.

    Normalised by the error's own size so the term stays O(1) as the main loss shrinks.
    """
    if not bool(dead.any()):
        return out.recon.new_zeros(())
    residual = (target - out.recon).detach()
    masked = out.pre.masked_fill(~dead.unsqueeze(0), float("-inf"))
    k = min(k_aux, int(dead.sum(-1).max()))
    values, indices = masked.topk(k, dim=-1)
    values = torch.relu(torch.nan_to_num(values, neginf=0.0))
    aux_acts = torch.zeros_like(out.pre).scatter(-1, indices, values)
    estimate = stack.decode(aux_acts, biases=False).float()
    error = (estimate - residual).pow(2).sum(-1).mean()
    return error / residual.pow(2).sum(-1).mean().clamp_min(1e-12)
