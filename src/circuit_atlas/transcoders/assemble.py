"""Assembly of what a reader found (`parts.SetParts`) into a `Transcoders`.

Readers differ only in file layout; once the layers are in memory orientation
(`docs/formats.md` §1), the cross-layer checks and the activation choice are shared.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from circuit_atlas.errors import ShapeMismatchError, TranscoderFormatError, TranscoderFormatWarning
from circuit_atlas.transcoders.activations import normalize_activation_name
from circuit_atlas.transcoders.core import Transcoders
from circuit_atlas.transcoders.parts import LayerParts, SetParts
from circuit_atlas.transcoders.validation import check_same_features

# circuit-tracer forces k=128 for this one published set, and so do we (`docs/formats.md` §4).
_FORCED_K = {"facebook/crv-8b-instruct-transcoders": 128}


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
    """The activation rule of `docs/formats.md` §4, strict where it would silently misbehave.

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
            warnings.warn(TranscoderFormatWarning(
                f"{scan}: using k={forced} for TopK as circuit-tracer does (config says {k!r})"),
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


def assemble(found: SetParts, scan: str | None = None) -> Transcoders:
    """Cross-layer checks (equal F and d, consistent optional tensors), then build the set.

    `scan` (a hub reference's identifier) wins over the one the reader found."""
    parts, where = found.layers, found.where
    origins = [p.origin for p in parts]
    check_same_features(origins, [int(p.W_enc.shape[0]) for p in parts])
    for part in parts:
        if part.W_enc.shape[1] != parts[0].W_enc.shape[1]:
            raise ShapeMismatchError(
                f"{part.origin}: d_model {part.W_enc.shape[1]} differs from {parts[0].W_enc.shape[1]} in {origins[0]}"
            )
    has_skip = _all_or_none(parts, "W_skip", "skip (W_skip)")
    scan = scan or found.scan
    name, k_value = choose_activation(parts, found.activation, found.k, where, scan)
    return Transcoders(
        found.kind,
        W_enc=[p.W_enc for p in parts],
        b_enc=[p.b_enc for p in parts],
        b_dec=[p.b_dec for p in parts],
        W_dec=[p.W_dec for p in parts],
        threshold=[p.threshold for p in parts] if name == "jumprelu" else None,  # type: ignore[misc]
        W_skip=[p.W_skip for p in parts] if has_skip else None,  # type: ignore[misc]
        activation=name,
        k=k_value,
        input_hook=found.input_hook,
        output_hook=found.output_hook,
        scan=scan,
        model_name=found.model_name,
        origins=origins,
    )
