"""Norm layers with a freezable denominator.

Attribution needs the model to be linear in the residual stream, so a norm's data-dependent
denominator must become a constant (`docs/algorithm.md` §5). We re-implement each supported norm
computation with the exact dtype handling transformers uses (so live results match bit-for-bit in
practice), split into: inverse scale `1/sqrt(var + eps)` (recordable, detachable, replayable),
pre-gain normalised value (`ln2.hook_normalized`), and gain/bias. Which class computes which way
is part of each family's adapter row (`FamilyAdapter.norms`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from circuit_atlas.errors import UnsupportedArchitectureError


def norm_kind(module: nn.Module, kinds: Mapping[str, str]) -> str | None:
    """How `module` computes according to `kinds` (class name -> computation), None if it is not
    a norm, and an error for a norm-like leaf module of a class the family does not declare."""
    name = type(module).__name__
    if name in kinds:
        return kinds[name]
    if "Norm" in name and not list(module.children()):
        raise UnsupportedArchitectureError(
            f"norm class {name!r} has no frozen-denominator implementation in this family's "
            f"adapter; known norm classes: {', '.join(sorted(kinds))} (add it to the family's "
            "FamilyAdapter.norms in circuit_atlas/models/adapters.py)"
        )
    return None


def find_norms(hf_model: nn.Module, base: str,
               kinds: Mapping[str, str]) -> dict[str, tuple[nn.Module, str]]:
    """Every norm module of the decoder stack at `base`, by full dotted path, with its kind.

    Only the language model is searched: image towers of multimodal checkpoints are never run.
    """
    found = {}
    for path, module in hf_model.get_submodule(base).named_modules():
        kind = norm_kind(module, kinds)
        if kind is not None:
            found[f"{base}.{path}" if path else base] = (module, kind)
    return found


def _eps(module: nn.Module) -> float:
    for attr in ("variance_epsilon", "eps"):
        value = getattr(module, attr, None)
        if value is not None:
            return float(value)
    raise UnsupportedArchitectureError(f"norm {type(module).__name__} has no epsilon attribute")


@dataclass
class NormResult:
    """Output of a norm plus the pieces other parts hook into."""

    output: torch.Tensor
    normalized: torch.Tensor  # before gain (and bias); in float32 for RMS kinds, like transformers
    inv_scale: torch.Tensor  # 1/sqrt(var+eps), float32, shape [..., 1]


def inverse_scale(kind: str, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The data-dependent factor: 1/sqrt(mean(x²)+eps), or 1/sqrt(var+eps) for LayerNorm."""
    x32 = x.float()
    if kind == "layernorm":
        x32 = x32 - x32.mean(-1, keepdim=True)
    return torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + _eps(module))


def apply_norm(kind: str, module: nn.Module, x: torch.Tensor, inv_scale: torch.Tensor) -> NormResult:
    """Normalise `x` with a given inverse scale (live, detached or replayed: the caller decides)."""
    x32 = x.float()
    if kind == "layernorm":
        normalized = (x32 - x32.mean(-1, keepdim=True)) * inv_scale
        out = normalized
        if module.weight is not None:
            out = out * module.weight.float()
        if module.bias is not None:
            out = out + module.bias.float()
        return NormResult(out.to(x.dtype), normalized, inv_scale)
    normalized = x32 * inv_scale
    if kind == "rms":
        # Llama-style: cast back to the input dtype before the gain.
        return NormResult(module.weight * normalized.to(x.dtype), normalized, inv_scale)
    if kind == "rms_one_plus":
        # Gemma-style: gain (1 + w) applied in float32, then cast.
        out = normalized * (1.0 + module.weight.float())
        return NormResult(out.type_as(x), normalized, inv_scale)
    raise UnsupportedArchitectureError(f"unknown norm kind {kind!r}")


def gain_of(kind: str, module: nn.Module) -> torch.Tensor:
    """Effective elementwise gain g with output = normalized · g (+ bias)."""
    if kind == "rms_one_plus":
        return 1.0 + module.weight.float()
    return module.weight.float()
