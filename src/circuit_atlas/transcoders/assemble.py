"""Per-layer pieces produced by every reader, and their assembly into a `Transcoders`.

Readers differ only in file layout; once a layer is read into `LayerParts` (our in-memory
orientation, reference §5), the cross-layer checks and the activation choice are shared.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from circuit_atlas.errors import ShapeMismatchError, TranscoderFormatError
from circuit_atlas.transcoders.activations import normalize_activation_name
from circuit_atlas.transcoders.core import Transcoders
from circuit_atlas.transcoders.decoders import DecoderStore
from circuit_atlas.transcoders.encoders import EncoderStore
from circuit_atlas.transcoders.validation import check_same_features

T = TypeVar("T")


def progress(items: Sequence[T], desc: str) -> Iterable[T]:
    """tqdm over per-layer work (reading a 26-layer CLT takes a while); silent for tiny sets
    and when stderr is not a terminal."""
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False, disable=True if len(items) < 4 else None)


# The reference forces k=128 for this one published set (reference §2.1).
_FORCED_K = {"facebook/crv-8b-instruct-transcoders": 128}


@dataclass
class LayerParts:
    """One source layer in memory orientation; `origin` names its file for messages."""

    origin: str
    W_enc: torch.Tensor | EncoderStore  # [F, d] or a store
    b_enc: torch.Tensor  # [F]
    b_dec: torch.Tensor  # [d] (of target layer = this layer)
    W_dec: torch.Tensor | DecoderStore  # [F, d] / [F, T, d] or a store
    threshold: torch.Tensor | None = None  # [F]
    W_skip: torch.Tensor | None = None  # [d_out, d_in]
    k: int | None = None  # a scalar `k` tensor found in the file (circuit-tracer TopK writer)


def _all_or_none(parts: Sequence[LayerParts], attr: str, label: str) -> bool:
    have = [getattr(p, attr) is not None for p in parts]
    if any(have) and not all(have):
        with_it = parts[have.index(True)].origin
        without = parts[have.index(False)].origin
        raise TranscoderFormatError(
            f"{without}: has no {label} tensor, but {with_it} has one; every layer must match"
        )
    return all(have)


def choose_activation(parts: Sequence[LayerParts], activation: str | None, k: object,
                      where: str, scan: str | None) -> tuple[str, int | None]:
    """The reference's selection rule (§4), made strict where it would silently misbehave.

    Config `activation` wins; without it, thresholds mean JumpReLU, a `k` tensor means TopK,
    otherwise ReLU. A config that contradicts the weights is an error naming both.
    """
    has_threshold = _all_or_none(parts, "threshold", "threshold")
    file_k = parts[0].k
    name = normalize_activation_name(activation, where=f"{where}: key 'activation'") if activation else None
    if name is None:
        name = "jumprelu" if has_threshold else ("topk" if file_k is not None else "relu")
    if has_threshold and name != "jumprelu":
        raise TranscoderFormatError(
            f"{where}: activation {name!r} conflicts with tensor 'threshold' in {parts[0].origin} "
            "(a threshold means JumpReLU)"
        )
    if name == "jumprelu" and not has_threshold:
        raise TranscoderFormatError(f"{where}: activation 'jumprelu' but {parts[0].origin} has no threshold tensor")
    if name != "topk":
        return name, None
    return name, _choose_k(k, file_k, where, scan)


def _choose_k(k: object, file_k: int | None, where: str, scan: str | None) -> int:
    if scan in _FORCED_K:
        forced = _FORCED_K[scan]
        if k != forced:
            warnings.warn(f"{scan}: using k={forced} for TopK as circuit-tracer does (config says {k!r})",
                          stacklevel=3)
        return forced
    if k is None:
        k = file_k
    if k is None:
        raise TranscoderFormatError(f"{where}: activation 'topk' needs key 'k' (an integer)")
    if isinstance(k, bool) or not isinstance(k, int):
        raise TranscoderFormatError(f"{where}: key 'k' must be an integer, got {k!r}")
    if file_k is not None and file_k != k:
        raise TranscoderFormatError(f"{where}: key 'k' is {k} but the weight files store k={file_k}")
    return k


def assemble(kind: str, parts: Sequence[LayerParts], *, activation: str | None, k: object,
             input_hook: str, output_hook: str, scan: str | None, model_name: str | None,
             where: str) -> Transcoders:
    """Cross-layer checks (equal F and d, consistent optional tensors), then build the set."""
    origins = [p.origin for p in parts]
    check_same_features(origins, [int(p.W_enc.shape[0]) for p in parts])
    for part in parts:
        if part.W_enc.shape[1] != parts[0].W_enc.shape[1]:
            raise ShapeMismatchError(
                f"{part.origin}: d_model {part.W_enc.shape[1]} differs from {parts[0].W_enc.shape[1]} in {origins[0]}"
            )
    has_skip = _all_or_none(parts, "W_skip", "skip (W_skip)")
    name, k_value = choose_activation(parts, activation, k, where, scan)
    return Transcoders(
        kind,
        W_enc=[p.W_enc for p in parts],
        b_enc=[p.b_enc for p in parts],
        b_dec=[p.b_dec for p in parts],
        W_dec=[p.W_dec for p in parts],
        threshold=[p.threshold for p in parts] if name == "jumprelu" else None,  # type: ignore[misc]
        W_skip=[p.W_skip for p in parts] if has_skip else None,  # type: ignore[misc]
        activation=name,
        k=k_value,
        input_hook=input_hook,
        output_hook=output_hook,
        scan=scan,
        model_name=model_name,
        origins=origins,
    )
