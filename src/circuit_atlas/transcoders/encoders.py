"""Encoder storage for one layer: in memory, or read from a mapped file each time it is used.

Why lazy encoders: encoders are much smaller than CLT decoders but still large (a 2.5M-feature
CLT for Gemma-2-2B has ~11.5 GB of bf16 encoders), and they are needed only one layer at a time.
A lazy set reads a layer's whole `[F, d]` matrix for one forward use and drops it, or gathers
just the rows of a few features (attribution's encoder vectors) through the memory map, so the
set fits accelerators that could not hold every encoder at once. The price is one read of each
layer's encoder per forward pass.

Every store hands out `[F, d]` rows (one per feature), whatever the file's orientation: the
GemmaScope-2 files store `[d, F]` and are read column-wise (`transposed=True`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch

from circuit_atlas.errors import ShapeMismatchError, TranscoderFormatError
from circuit_atlas.transcoders.safetensors_io import SafetensorsFile, TensorSource
from circuit_atlas.transcoders.validation import all_finite, check_mapped, first_bad_row, read_tensor


class EncoderStore(Protocol):
    """The `[F, d]` encoder of one layer."""

    n_features: int
    d_model: int
    description: str  # file and tensor, for error messages

    @property
    def shape(self) -> tuple[int, int]: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def is_lazy(self) -> bool: ...

    @property
    def resident_bytes(self) -> int:
        """Bytes of encoder weights this store keeps in memory between uses."""

    def weight(self) -> torch.Tensor:
        """The whole `[F, d]` matrix in the set's dtype, on its device."""

    def rows(self, features: torch.Tensor) -> torch.Tensor:
        """`[n, d]` rows of `features` (any order, repeats allowed), set dtype and device."""

    def chunks(self, budget_bytes: int) -> Iterator[torch.Tensor]:
        """The whole `[F, d]` matrix in row chunks of about `budget_bytes` (for writers)."""

    def to(self, device: torch.device, dtype: torch.dtype) -> EncoderStore: ...


class EagerEncoder:
    """Encoder held as an `[F, d]` tensor (small sets, npz files, freshly trained sets)."""

    is_lazy = False

    def __init__(self, weight: torch.Tensor, description: str = "W_enc") -> None:
        if weight.dim() != 2:
            raise ShapeMismatchError(f"{description}: encoder must be [F, d], got shape {list(weight.shape)}")
        self._weight = weight
        self.n_features, self.d_model = (int(s) for s in weight.shape)
        self.description = description

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_features, self.d_model)

    @property
    def device(self) -> torch.device:
        return self._weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self._weight.dtype

    @property
    def resident_bytes(self) -> int:
        return self._weight.numel() * self._weight.element_size()

    def weight(self) -> torch.Tensor:
        return self._weight  # the held tensor itself: in-place edits change the set

    def rows(self, features: torch.Tensor) -> torch.Tensor:
        return self._weight.index_select(0, features.to(self._weight.device))

    def chunks(self, budget_bytes: int) -> Iterator[torch.Tensor]:
        yield self._weight

    def to(self, device: torch.device, dtype: torch.dtype) -> EagerEncoder:
        self._weight = self._weight.to(device=device, dtype=dtype)
        return self


class MappedEncoder:
    """Encoder read from a safetensors file on every use; nothing of it stays in memory.

    `transposed` marks files that store the encoder as `[d, F]` (GemmaScope-2); rows are then
    columns of the file's tensor, and `weight()` returns the contiguous `[F, d]` transpose, the
    same layout an eager load produces (so results match bit for bit).
    """

    is_lazy = True
    resident_bytes = 0

    def __init__(self, file: SafetensorsFile, key: str, *, transposed: bool = False,
                 device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> None:
        info = file.info(key)
        if len(info.shape) != 2:
            raise TranscoderFormatError(f"{file.path}: tensor {key!r} must be 2-D, got shape {list(info.shape)}")
        self.file, self.key, self.transposed = file, key, transposed
        d_first = transposed
        self.n_features = int(info.shape[1] if d_first else info.shape[0])
        self.d_model = int(info.shape[0] if d_first else info.shape[1])
        self._device = device or torch.device("cpu")
        self._dtype = dtype
        self.description = f"{file.path}: tensor {key!r}"

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_features, self.d_model)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def _index(self, rows: object) -> tuple[object, ...]:
        return (slice(None), rows) if self.transposed else (rows,)

    def _as_rows(self, raw: torch.Tensor) -> torch.Tensor:
        return raw.T.contiguous() if self.transposed else raw

    def weight(self) -> torch.Tensor:
        """A fresh `[F, d]` tensor read from the file (writing into it changes nothing).

        Moved and cast before the (GemmaScope-2) transpose, which then runs on the device, and
        checked after the cast: a value finite in the file can overflow a smaller dtype."""
        raw = self.file.read(self.key).to(device=self._device, dtype=self._dtype)
        out = self._as_rows(raw)
        self._check_finite(out)
        return out

    def rows(self, features: torch.Tensor) -> torch.Tensor:
        idx = features.detach().to("cpu", torch.int64).numpy()
        order = np.argsort(idx, kind="stable")  # ascending reads walk the file forwards
        raw = self._as_rows(self.file.read_index(self.key, self._index(idx[order])))
        out = torch.empty_like(raw)
        out[torch.from_numpy(order)] = raw
        out = out.to(device=self._device, dtype=self._dtype)
        self._check_finite(out, idx)  # after the cast, as in `weight`
        return out

    def _check_finite(self, rows: torch.Tensor, idx: np.ndarray | None = None, start: int = 0) -> None:
        """Lazy encoders skip the load-time scan, so each read is checked instead.

        Row `i` of `rows` is feature `idx[i]`, or `start + i` when `idx` is None.
        """
        if not all_finite(rows):
            bad = first_bad_row(rows)
            feature = int(idx[bad]) if idx is not None else start + bad
            raise TranscoderFormatError(f"{self.description}: row of feature {feature} holds NaN or inf")

    def chunks(self, budget_bytes: int) -> Iterator[torch.Tensor]:
        step = max(1, budget_bytes // (self.d_model * 8))
        for start in range(0, self.n_features, step):
            stop = min(self.n_features, start + step)
            block = self._as_rows(self.file.read_index(self.key, self._index(slice(start, stop))))
            self._check_finite(block, start=start)
            yield block.to(dtype=self._dtype)

    def to(self, device: torch.device, dtype: torch.dtype) -> MappedEncoder:
        self._device, self._dtype = device, dtype
        return self


def read_encoder(file: SafetensorsFile, key: str, n_features: int, d_model: int, dtype: torch.dtype,
                 lazy: bool, *, transposed: bool = False, meaning: str = "") -> torch.Tensor | MappedEncoder:
    """The encoder `key` of `file` as an eager `[F, d]` tensor or a lazy store.

    Shape and dtype are checked either way; finiteness at load (eager) or on each read (lazy).
    `transposed`: the file stores `[d, F]`.
    """
    expected = [d_model, n_features] if transposed else [n_features, d_model]
    if lazy:
        check_mapped(file, key, expected, meaning)
        return MappedEncoder(file, key, transposed=transposed, dtype=dtype)
    tensor = read_tensor(file, key, expected, dtype, meaning)
    return tensor.T.contiguous() if transposed else tensor


def encoder_source(store: EncoderStore, dtype: torch.dtype) -> TensorSource:
    """A store's `[F, d]` matrix for the streaming writer, in chunks: saving a lazy set never
    holds a whole encoder in memory."""

    def chunks() -> Iterator[torch.Tensor]:
        for chunk in store.chunks(256 << 20):
            yield chunk.to(dtype)

    return TensorSource((store.n_features, store.d_model), dtype, chunks)
