"""The output tokens a feature promotes and suppresses through its decoder direction.

Effect of feature f of layer l on the logits along the direct path: `(Σ_t W_dec[l→t, f]) · W_Uᵀ`,
where the sum runs over the layers the feature writes to (`target_layers(l)`: just l for a
per-layer transcoder, l..L-1 for a cross-layer one). Summing is the natural choice for CLTs
because every decoder output is added to the same residual stream, so the sum is what reaches
the unembedding; the last layer's decoder alone would miss the (often larger) early writes.
As in circuit-tracer's dashboards, the final norm and any logit soft-cap are left out (the norm is
a per-token rescaling; the soft-cap is monotone), so these are directions, not exact logit changes.
"""

from __future__ import annotations

import numpy as np
import torch

BLOCK_ELEMENTS = 1 << 25  # features per block × vocabulary stays below ~128 MiB of float32


@torch.no_grad()
def decoder_directions(transcoders, layer: int, features: torch.Tensor) -> torch.Tensor:
    """Summed decoder vectors `[n, d]` (float32) of `features` of `layer`."""
    return transcoders.decoder_rows_all(layer, features).float().sum(1)


@torch.no_grad()
def logit_effects(transcoders, unembedding: torch.Tensor, layer: int, n: int):
    """For every feature of `layer`: (top ids, top values, bottom ids, bottom values), each
    `[F, n]` numpy, top in descending and bottom in ascending order of the effect."""
    w_u = unembedding.float()
    vocab = w_u.shape[0]
    n = min(n, vocab)
    block = max(1, BLOCK_ELEMENTS // vocab)
    parts: list[list[np.ndarray]] = [[], [], [], []]
    for start in range(0, transcoders.n_features, block):
        features = torch.arange(start, min(start + block, transcoders.n_features))
        effect = decoder_directions(transcoders, layer, features).to(w_u.device) @ w_u.T
        top = effect.topk(n, dim=1)
        bottom = effect.topk(n, dim=1, largest=False)
        for slot, tensor in enumerate((top.indices, top.values, bottom.indices, bottom.values)):
            parts[slot].append(tensor.cpu().numpy())
    return tuple(np.concatenate(p) for p in parts)
