"""Checks shared by all readers; every message names the file and the tensor.

Users bring files from several ecosystems (circuit-tracer, GemmaScope, our own writer, their own
training code), and a wrong file should fail at load time with a message that says which file
and which tensor is wrong, not later as a matmul shape error deep in attribution.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from circuit_atlas.errors import ShapeMismatchError, TranscoderFormatError
from circuit_atlas.transcoders.safetensors_io import SafetensorsFile

_ROW_CHUNK = 1 << 16


def check_keys(where: Path | str, present: Iterable[str], required: Iterable[str],
               optional: Iterable[str] = ()) -> None:
    """Missing required tensors and unexpected ones are both errors (strict, like circuit-tracer)."""
    present = set(present)
    missing = [k for k in required if k not in present]
    if missing:
        raise TranscoderFormatError(
            f"{where}: missing tensor(s) {', '.join(map(repr, missing))} (file holds {sorted(present)})"
        )
    unexpected = sorted(present - set(required) - set(optional))
    if unexpected:
        raise TranscoderFormatError(
            f"{where}: unexpected tensor(s) {', '.join(map(repr, unexpected))}; expected "
            f"{sorted(set(required))} and optionally {sorted(set(optional))}"
        )


def check_shape(where: Path | str, name: str, shape: Sequence[int], expected: Sequence[int | None],
                meaning: str = "") -> None:
    """`None` in `expected` matches any size; the message spells out the expected layout."""
    ok = len(shape) == len(expected) and all(e is None or s == e for s, e in zip(shape, expected))
    if not ok:
        want = "[" + ", ".join("?" if e is None else str(e) for e in expected) + "]"
        note = f" ({meaning})" if meaning else ""
        raise ShapeMismatchError(f"{where}: tensor {name!r} has shape {list(shape)}, expected {want}{note}")


def check_floating(where: Path | str, name: str, dtype: torch.dtype | np.dtype | str) -> None:
    floating = dtype.is_floating_point if isinstance(dtype, torch.dtype) else np.dtype(dtype).kind == "f"
    if not floating:
        raise TranscoderFormatError(f"{where}: tensor {name!r} has non-floating dtype {dtype}; weights must be floats")


def all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or inf. Min/max reductions (NaN propagates, ±inf shows as an extreme) are ~20×
    faster than `isfinite(t).all()` and allocate nothing, which matters for multi-GB encoders."""
    if tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor.reshape(-1))
    return bool(torch.isfinite(low) & torch.isfinite(high))


def first_bad_row(tensor: torch.Tensor) -> int:
    """Index along dim 0 of the first row holding NaN/inf (only called once one is known)."""
    flat = tensor.reshape(tensor.shape[0], -1) if tensor.dim() > 1 else tensor.reshape(-1, 1)
    return int((~torch.isfinite(flat)).any(1).nonzero()[0, 0])


def check_finite(where: Path | str, name: str, tensor: torch.Tensor) -> None:
    """NaN/inf weights poison every downstream number silently; reject them at load time."""
    if tensor.dim() == 0:
        tensor = tensor.reshape(1)
    for start in range(0, tensor.shape[0], _ROW_CHUNK):
        block = tensor[start:start + _ROW_CHUNK]
        if not all_finite(block):
            row = start + first_bad_row(block)
            raise TranscoderFormatError(f"{where}: tensor {name!r} holds NaN or inf (first at row {row})")


def read_tensor(file: SafetensorsFile, name: str, expected: Sequence[int | None], dtype: torch.dtype,
                meaning: str = "") -> torch.Tensor:
    """Read one tensor eagerly: shape, dtype and finiteness checked, cast to `dtype`."""
    info = file.info(name)
    check_floating(file.path, name, info.torch_dtype or info.dtype_tag)
    check_shape(file.path, name, info.shape, expected, meaning)
    tensor = file.read(name).to(dtype)
    check_finite(file.path, name, tensor)
    return tensor


def check_mapped(file: SafetensorsFile, name: str, expected: Sequence[int | None], meaning: str = "") -> None:
    """Validate a tensor that stays on disk (lazy decoder): dtype and shape only."""
    info = file.info(name)
    check_floating(file.path, name, info.torch_dtype or info.dtype_tag)
    check_shape(file.path, name, info.shape, expected, meaning)


def from_numpy(where: Path | str, name: str, arrays: Mapping[str, np.ndarray], expected: Sequence[int | None],
               dtype: torch.dtype, meaning: str = "") -> torch.Tensor:
    """The npz counterpart of `read_tensor`."""
    if name not in arrays:
        raise TranscoderFormatError(f"{where}: missing array {name!r} (file holds {sorted(arrays)})")
    array = arrays[name]
    check_floating(where, name, array.dtype)
    check_shape(where, name, array.shape, expected, meaning)
    tensor = torch.from_numpy(np.ascontiguousarray(array)).to(dtype)
    check_finite(where, name, tensor)
    return tensor


def check_same_features(layer_files: Sequence[Path | str], widths: Sequence[int]) -> None:
    """All layers must have the same F (circuit-tracer's TranscoderSet enforces this too)."""
    for path, width in zip(layer_files, widths):
        if width != widths[0]:
            raise ShapeMismatchError(
                f"{path}: has {width} features, but {layer_files[0]} has {widths[0]}; "
                "all layers must have the same number of features"
            )


def check_layer_sequence(directory: Path, indices: Iterable[int], pattern: str) -> int:
    """Layer files must be numbered 0..L-1 without gaps; returns L. `pattern` has `{i}`."""
    found = sorted(set(indices))
    if not found:
        raise TranscoderFormatError(f"{directory}: no files named {pattern.format(i='<layer>')}")
    missing = [i for i in range(found[-1] + 1) if i not in found]
    if missing:
        names = ", ".join(pattern.format(i=i) for i in missing[:5])
        raise TranscoderFormatError(
            f"{directory}: missing layer file(s) {names} (found layers up to {found[-1]})"
        )
    return found[-1] + 1
