"""Synthetic activations with planted sparse structure, to prove that training *recovers*
features rather than merely running.

Per layer s there are K latent features with sparse non-negative strengths a_{s,k} (firing with
probability `p`, strength uniform in [0.5, 1.5]). The input of layer s is Σ_k a_{s,k}·e_{s,k} plus
a little noise (e: random unit "input" directions), so a_{s,k} can be read off x_s; the target
of layer t is Σ_{s} Σ_k a_{s,k}·D_{s,k,t} with known decoder directions D. For a PLT structure
only t = s is non-zero; for a CLT structure a feature of layer s writes into every t ≥ s.
A correct trainer must find decoders aligned with D (see `recovery_cosines`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PlantedData:
    inputs: torch.Tensor            # [N, L, d]
    targets: torch.Tensor           # [N, L, d]
    latents: torch.Tensor           # [N, L, K]
    decoders: list[torch.Tensor]    # per source s: [K, T_s, d] (T_s = 1 PLT, L − s CLT)


def planted_data(n_tokens: int, n_layers: int, d_model: int, n_planted: int, *,
                 cross_layer: bool = False, p: float = 0.06, input_noise: float = 0.02,
                 seed: int = 0) -> PlantedData:
    gen = torch.Generator().manual_seed(seed)
    L, K, d = n_layers, n_planted, d_model
    enc = _unit(torch.randn(L, K, d, generator=gen))
    fires = torch.rand(n_tokens, L, K, generator=gen) < p
    strength = 0.5 + torch.rand(n_tokens, L, K, generator=gen)
    latents = fires * strength
    inputs = torch.einsum("nlk,lkd->nld", latents, enc)
    inputs = inputs + input_noise * torch.randn(n_tokens, L, d, generator=gen)
    decoders = []
    targets = torch.zeros(n_tokens, L, d)
    for s in range(L):
        n_targets = L - s if cross_layer else 1
        block = torch.randn(K, n_targets, d, generator=gen)
        block = block / block.flatten(1).norm(dim=1)[:, None, None]
        decoders.append(block)
        targets[:, s:s + n_targets] += torch.einsum("nk,ktd->ntd", latents[:, s], block)
    return PlantedData(inputs, targets, latents, decoders)


def recovery_cosines(planted: list[torch.Tensor], learned: list[torch.Tensor]) -> torch.Tensor:
    """For each planted feature `[L, K]`: the largest cosine between its (flattened, all target
    layers) decoder and any learned decoder of the same source layer."""
    rows = []
    for p_block, l_block in zip(planted, learned):
        p_flat = _unit(p_block.flatten(1).float())
        l_flat = _unit(l_block.detach().flatten(1).float())
        rows.append((p_flat @ l_flat.T).max(dim=1).values)
    return torch.stack(rows)


def _unit(t: torch.Tensor) -> torch.Tensor:
    return t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)
