"""Seeded random transcoder sets for tests and benchmarks.

Scaled so that on inputs with O(1) entries (e.g. `randn(P, d)` or a normalised residual stream)
a good fraction of features fire (about a third to a half for ReLU/JumpReLU) and the
reconstruction is O(1): encoder rows have norm ~1, decoder columns are scaled by `1/sqrt(F)`.
"""

from __future__ import annotations

import math

import torch

from circuit_atlas.errors import TranscoderFormatError
from circuit_atlas.transcoders.activations import normalize_activation_name
from circuit_atlas.transcoders.core import Transcoders
from circuit_atlas.transcoders.parts import KINDS


def random_transcoders(
    kind: str = "plt",
    n_layers: int = 2,
    d_model: int = 16,
    n_features: int = 32,
    *,
    activation: str = "relu",
    k: int | None = None,
    skip: bool = False,
    seed: int = 0,
    input_hook: str = "mlp.hook_in",
    output_hook: str = "mlp.hook_out",
    scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
    model_name: str | None = None,
    scan: str | None = None,
) -> Transcoders:
    """A reproducible set: same arguments and seed give bit-identical weights.

    `scale` multiplies the decoder (and skip) weights, i.e. the size of the reconstruction.
    TopK defaults to `k = max(1, n_features // 8)`. JumpReLU thresholds lie in [0, 0.5).
    """
    if kind not in KINDS:
        raise TranscoderFormatError(f"kind must be 'plt' or 'clt', got {kind!r}")
    activation = normalize_activation_name(activation)
    gen = torch.Generator().manual_seed(seed)
    L, d, F = n_layers, d_model, n_features

    def randn(*shape: int, std: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * std).to(dtype)

    W_enc = [randn(F, d, std=1 / math.sqrt(d)) for _ in range(L)]
    b_enc = [randn(F, std=0.1) - 0.05 for _ in range(L)]
    b_dec = [randn(d, std=0.1) for _ in range(L)]
    targets = [1 if kind == "plt" else L - layer for layer in range(L)]
    W_dec = [randn(F, t, d, std=scale / math.sqrt(F)) for t in targets]
    threshold = None
    if activation == "jumprelu":
        threshold = [(torch.rand(F, generator=gen) * 0.5).to(dtype) for _ in range(L)]
    W_skip = [randn(d, d, std=0.5 * scale / math.sqrt(d)) for _ in range(L)] if skip else None
    if activation == "topk" and k is None:
        k = max(1, F // 8)
    return Transcoders(
        kind, W_enc=W_enc, b_enc=b_enc, b_dec=b_dec, W_dec=W_dec, threshold=threshold, W_skip=W_skip,
        activation=activation, k=k, input_hook=input_hook, output_hook=output_hook,
        scan=scan or f"random-{kind}-{activation}-seed{seed}", model_name=model_name,
    )
