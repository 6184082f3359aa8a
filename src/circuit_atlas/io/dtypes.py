"""Dtype names as users type them (`"bf16"`, `"float16"`, `"torch.float32"`) to torch dtypes.

One definition for the model loader, the transcoder loader and `circuit_atlas.load`, so the
same spellings work everywhere and a bad one gets the same message.
"""

from __future__ import annotations

import torch

from circuit_atlas.errors import CircuitAtlasError

ALIASES = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16",
           "bf16": "bfloat16", "fp64": "float64", "double": "float64"}


def resolve_dtype(dtype: torch.dtype | str | None, *, default: torch.dtype | None = None,
                  error: type[CircuitAtlasError] = CircuitAtlasError) -> torch.dtype | None:
    """A floating torch dtype from a dtype or its name; `default` when `dtype` is None.

    `error` is the exception class raised for a bad value, so each loader reports it as its own
    kind of problem (`TranscoderFormatError` for transcoders)."""
    if dtype is None:
        return default
    if isinstance(dtype, str):
        name = dtype.strip().lower().removeprefix("torch.")
        value = getattr(torch, ALIASES.get(name, name), None)
        if not isinstance(value, torch.dtype):
            raise error(f"dtype {dtype!r} is not a torch dtype name; use a floating dtype such as "
                        "float32, bfloat16 or float16")
        dtype = value
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise error(f"dtype must be a floating torch dtype such as float32, bfloat16 or float16, "
                    f"got {dtype!r}")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` -> `"bfloat16"` (the form configs store)."""
    return str(dtype).removeprefix("torch.")
