"""Decoder storage for one source layer: in memory, or read row by row from a mapped file.

Every format keeps one row per feature (`[F, d]` or `[F, T, d]`), so gathering the decoder vectors
of a few thousand active features is one fancy-index into a memory map: a 2.5M-feature CLT
never needs its decoders (hundreds of GB in float32) in RAM. `Transcoders` sees only this small
interface, whatever the source format.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch

from circuit_atlas.errors import TranscoderFormatError
from circuit_atlas.transcoders.safetensors_io import SafetensorsFile
from circuit_atlas.transcoders.validation import all_finite, check_mapped, first_bad_row, read_tensor


class DecoderStore(Protocol):
    """Decoder rows of one source layer for its `n_targets` consecutive target layers."""

    n_features: int
    n_targets: int
    d_model: int
    description: str  # file and tensor, for error messages

    def rows(self, features: torch.Tensor, offset: int | None) -> torch.Tensor:
        """`[n, d]` for target offset `offset`, or `[n, T, d]` for all targets when None."""

    def chunks(self, budget_bytes: int) -> Iterator[torch.Tensor]:
        """The whole `[F, T, d]` tensor in row chunks (for writers)."""

    def to(self, device: torch.device, dtype: torch.dtype) -> DecoderStore: ...

    @property
    def is_lazy(self) -> bool: ...


class EagerDecoder:
    """Decoder held as a `[F, T, d]` tensor (small sets, npz files, freshly trained sets)."""

    is_lazy = False

    def __init__(self, weight: torch.Tensor, description: str = "W_dec") -> None:
        if weight.dim() == 2:
            weight = weight.unsqueeze(1)
        self.weight = weight
        self.n_features, self.n_targets, self.d_model = weight.shape
        self.description = description

    def rows(self, features: torch.Tensor, offset: int | None) -> torch.Tensor:
        features = features.to(self.weight.device)
        if offset is None:
            return self.weight.index_select(0, features)
        return self.weight[:, offset].index_select(0, features)

    def chunks(self, budget_bytes: int) -> Iterator[torch.Tensor]:
        yield self.weight

    def to(self, device: torch.device, dtype: torch.dtype) -> EagerDecoder:
        self.weight = self.weight.to(device=device, dtype=dtype)
        return self


class MappedDecoder:
    """Decoder rows read on demand from a safetensors file through a memory map.

    `target_start` handles layouts that store rows for more targets than the source writes to:
    the GemmaScope-2 CLT keeps `[F, L, d]` for every source layer, of which source `i` uses
    targets `i..L-1`. A 2-D `[F, d]` tensor (PLT) is one target.
    """

    is_lazy = True

    def __init__(self, file: SafetensorsFile, key: str, *, target_start: int = 0,
                 n_targets: int | None = None, device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        info = file.info(key)
        self.file, self.key = file, key
        self._two_d = len(info.shape) == 2
        self.n_features = info.shape[0]
        self.d_model = info.shape[-1]
        stored_targets = 1 if self._two_d else info.shape[1]
        self.target_start = target_start
        self.n_targets = stored_targets - target_start if n_targets is None else n_targets
        self.device = device or torch.device("cpu")
        self.dtype = dtype
        self.description = f"{file.path}: tensor {key!r}"

    def _index(self, rows: object, offset: int | None) -> tuple[object, ...]:
        if self._two_d:
            return (rows,)
        if offset is None:
            return (rows, slice(self.target_start, self.target_start + self.n_targets))
        return (rows, self.target_start + offset)

    def rows(self, features: torch.Tensor, offset: int | None) -> torch.Tensor:
        idx = features.detach().to("cpu", torch.int64).numpy()
        order = np.argsort(idx, kind="stable")  # ascending reads walk the file forwards
        raw = self.file.read_index(self.key, self._index(idx[order], offset))
        out = torch.empty_like(raw)
        out[torch.from_numpy(order)] = raw
        if self._two_d and offset is None:
            out = out.unsqueeze(1)
        self._check_finite(out, idx)
        return out.to(device=self.device, dtype=self.dtype)

    def _check_finite(self, rows: torch.Tensor, idx: np.ndarray) -> None:
        """Lazy rows skip the load-time scan, so each read is checked (cheap: few rows)."""
        if not all_finite(rows):
            bad = first_bad_row(rows)
            raise TranscoderFormatError(f"{self.description}: row of feature {int(idx[bad])} holds NaN or inf")

    def chunks(self, budget_bytes: int) -> Iterator[torch.Tensor]:
        row_bytes = self.n_targets * self.d_model * 8
        step = max(1, budget_bytes // row_bytes)
        for start in range(0, self.n_features, step):
            sel = slice(start, min(self.n_features, start + step))
            block = self.file.read_index(self.key, self._index(sel, None))
            if self._two_d:
                block = block.unsqueeze(1)
            yield block.to(dtype=self.dtype)

    def to(self, device: torch.device, dtype: torch.dtype) -> MappedDecoder:
        self.device, self.dtype = device, dtype
        return self


def read_decoder(file: SafetensorsFile, key: str, expected: list[int], dtype: torch.dtype,
                 lazy: bool, meaning: str = "") -> torch.Tensor | MappedDecoder:
    """The decoder `key` of `file` (shape `expected`, `meaning` for messages) as an eager tensor or,
    with `lazy`, rows mapped on demand. The shape and dtype are checked either way; the partner
    of `encoders.read_encoder`, so every format reads decoders by one rule."""
    if lazy:
        check_mapped(file, key, expected, meaning)
        return MappedDecoder(file, key, dtype=dtype)
    return read_tensor(file, key, expected, dtype, meaning)
