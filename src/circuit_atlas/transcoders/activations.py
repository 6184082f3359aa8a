"""Transcoder activation functions, exactly as circuit-tracer applies them (`docs/formats.md` §4).

The details matter for matching circuit-tracer's graphs feature for feature:
- JumpReLU is `h · 1[h > θ]` with a *strict* comparison and *no* ReLU, so `h == θ` gives 0 and
  with a negative θ a negative value above θ passes. SAELens/GemmaScope use
  `relu(h)·1[h>θ]`; the two agree for θ ≥ 0.
- TopK keeps the k largest entries per position *without* a ReLU, so kept values may be negative;
  ties follow `torch.topk`.
"""

from __future__ import annotations

import torch

from circuit_atlas.errors import TranscoderFormatError

ACTIVATIONS = ("relu", "jumprelu", "topk")


def normalize_activation_name(name: str, *, where: str = "activation") -> str:
    """Map spellings used across formats ('jump_relu', 'JumpReLU', 'top_k') to our three names."""
    key = str(name).strip().lower().replace("_", "").replace("-", "")
    mapping = {"relu": "relu", "jumprelu": "jumprelu", "topk": "topk"}
    if key not in mapping:
        raise TranscoderFormatError(
            f"{where}: unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}"
        )
    return mapping[key]


def relu(h: torch.Tensor) -> torch.Tensor:
    return torch.relu(h)


def jump_relu(h: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """`h · 1[h > θ]` (strict), broadcasting θ `[F]` over leading dims."""
    return h * (h > threshold).to(h.dtype)


def top_k(h: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest pre-activations along the last axis, zero the rest (no ReLU)."""
    if k >= h.shape[-1]:
        return h.clone()
    values, indices = torch.topk(h, k, dim=-1)
    return torch.zeros_like(h).scatter(-1, indices, values)


def apply_activation(name: str, h: torch.Tensor, threshold: torch.Tensor | None,
                     k: int | None) -> torch.Tensor:
    """Dispatch on the activation name; the caller guarantees θ/k are present when needed."""
    if name == "relu":
        return relu(h)
    if name == "jumprelu":
        assert threshold is not None
        return jump_relu(h, threshold)
    if name == "topk":
        assert k is not None
        return top_k(h, k)
    raise TranscoderFormatError(f"unknown activation {name!r}")
