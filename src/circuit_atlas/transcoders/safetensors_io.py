"""Reading and writing safetensors files without loading them whole.

Why our own header parser: the `safetensors` library slices only with plain ranges, so gathering a
few thousand scattered decoder rows from a 2.5M-feature CLT would cost one Python call per row.
Parsing the (tiny, JSON) header ourselves gives each tensor's byte range, which we memory-map
with numpy and gather with fancy indexing in one call; the OS pages in only the rows we touch.
The same parse validates the file (truncation, overlapping ranges, unknown dtypes), so a corrupt
file is reported by name before any tensor is used.

The writer streams tensors chunk by chunk, so converting a lazily-loaded set never needs more
than one chunk of a decoder in memory.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from circuit_atlas.errors import TranscoderFormatError
from circuit_atlas.io.atomic import atomic_files

# safetensors dtype tag -> (torch dtype, numpy dtype used to map the raw bytes)
_DTYPES: dict[str, tuple[torch.dtype, np.dtype]] = {
    "F64": (torch.float64, np.dtype("<f8")),
    "F32": (torch.float32, np.dtype("<f4")),
    "F16": (torch.float16, np.dtype("<f2")),
    "BF16": (torch.bfloat16, np.dtype("<u2")),  # numpy has no bfloat16: map bits, view in torch
    "I64": (torch.int64, np.dtype("<i8")),
    "I32": (torch.int32, np.dtype("<i4")),
    "I16": (torch.int16, np.dtype("<i2")),
    "I8": (torch.int8, np.dtype("i1")),
    "U8": (torch.uint8, np.dtype("u1")),
    "BOOL": (torch.bool, np.dtype("?")),
}
_TAG_OF: dict[torch.dtype, str] = {t: tag for tag, (t, _) in _DTYPES.items()}

_MAX_HEADER = 100_000_000  # the safetensors library's own limit


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives inside a safetensors file."""

    name: str
    dtype_tag: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def torch_dtype(self) -> torch.dtype | None:
        """The torch dtype, or None for tags we cannot map (e.g. F8 variants)."""
        entry = _DTYPES.get(self.dtype_tag)
        return entry[0] if entry else None

    @property
    def is_floating(self) -> bool:
        dtype = self.torch_dtype
        return dtype is not None and dtype.is_floating_point


class SafetensorsFile:
    """A validated safetensors file whose tensors are read on demand through a memory map."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.tensors, self.metadata = _read_header(self.path)
        self._maps: dict[str, np.ndarray] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def keys(self) -> list[str]:
        return list(self.tensors)

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise TranscoderFormatError(
                f"{self.path}: tensor {name!r} is missing (file holds {sorted(self.tensors)})"
            ) from None

    def _numpy_dtype(self, info: TensorInfo) -> np.dtype:
        entry = _DTYPES.get(info.dtype_tag)
        if entry is None:
            raise TranscoderFormatError(f"{self.path}: tensor {info.name!r} has unsupported dtype {info.dtype_tag}")
        return entry[1]

    def mapped(self, name: str) -> np.ndarray:
        """The tensor as a read-only numpy memmap in its file's byte layout (no copy).

        The map is advised MADV_RANDOM: gathers touch scattered rows, and the default
        read-around would page in megabytes around every row (the whole file, for a few
        thousand rows), wasting I/O and page cache on multi-GB decoders.
        """
        if name not in self._maps:
            info = self.info(name)
            np_dtype = self._numpy_dtype(info)
            if info.end == info.start:  # numpy cannot map zero bytes
                self._maps[name] = np.zeros(info.shape, dtype=np_dtype)
            else:
                array = np.memmap(self.path, dtype=np_dtype, mode="r", offset=info.start, shape=info.shape)
                _advise_random(array)
                self._maps[name] = array
        return self._maps[name]

    def read(self, name: str) -> torch.Tensor:
        """The whole tensor, read into private memory (torch tensor in the file's dtype).

        A plain sequential read, not the memory map: the copy is all we keep, and the file's
        pages are not left mapped into this process.
        """
        info = self.info(name)
        np_dtype = self._numpy_dtype(info)
        count = int(np.prod(info.shape, dtype=np.int64))
        with open(self.path, "rb") as handle:
            handle.seek(info.start)
            array = np.fromfile(handle, dtype=np_dtype, count=count)
        if array.size != count:
            raise TranscoderFormatError(f"{self.path}: tensor {name!r} is truncated")
        return _to_torch(array.reshape(info.shape), info)

    def read_index(self, name: str, index: object) -> torch.Tensor:
        """`tensor[index]` read through the memory map; only the touched pages are loaded."""
        picked = np.array(self.mapped(name)[index], order="C")  # always a private, writable copy
        return _to_torch(picked, self.info(name))


def _advise_random(array: np.memmap) -> None:
    handle = getattr(array, "_mmap", None)
    if handle is not None and hasattr(handle, "madvise") and hasattr(mmap, "MADV_RANDOM"):
        try:
            handle.madvise(mmap.MADV_RANDOM)
        except OSError:  # advice only; some filesystems refuse it
            pass


def _to_torch(array: np.ndarray, info: TensorInfo) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if info.dtype_tag == "BF16":
        tensor = tensor.view(torch.bfloat16)
    return tensor


def _read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header; any inconsistency names the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise TranscoderFormatError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > _MAX_HEADER or 8 + header_len > size:
                raise TranscoderFormatError(
                    f"{path}: corrupt safetensors file (header length {header_len} does not fit "
                    f"in a file of {size} bytes)"
                )
            raw = handle.read(header_len)
    except FileNotFoundError:
        raise TranscoderFormatError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise TranscoderFormatError(f"{path}: expected a safetensors file, found a directory") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TranscoderFormatError(f"{path}: corrupt safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise TranscoderFormatError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    tensors = {name: _parse_entry(path, name, entry, data_start) for name, entry in header.items()}
    _check_layout(path, tensors, data_start, size)
    return tensors, metadata


def _parse_entry(path: Path, name: str, entry: object, data_start: int) -> TensorInfo:
    try:
        tag = str(entry["dtype"])  # type: ignore[index]
        shape = tuple(int(s) for s in entry["shape"])  # type: ignore[index]
        begin, end = (int(o) for o in entry["data_offsets"])  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        raise TranscoderFormatError(f"{path}: corrupt header entry for tensor {name!r}") from None
    info = TensorInfo(name, tag, shape, data_start + begin, data_start + end)
    entry_dtype = _DTYPES.get(tag)
    if entry_dtype is not None:
        expected = int(np.prod(shape, dtype=np.int64)) * entry_dtype[1].itemsize
        if end - begin != expected:
            raise TranscoderFormatError(
                f"{path}: corrupt tensor {name!r}: shape {list(shape)} {tag} needs {expected} "
                f"bytes, header gives {end - begin}"
            )
    return info


def _check_layout(path: Path, tensors: Mapping[str, TensorInfo], data_start: int, size: int) -> None:
    """Byte ranges must tile the data section exactly: catches truncated and spliced files."""
    cursor = data_start
    for info in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if info.start != cursor or info.end < info.start:
            raise TranscoderFormatError(
                f"{path}: corrupt safetensors file (tensor {info.name!r} does not start where "
                "the previous one ends)"
            )
        cursor = info.end
    if cursor != size:
        raise TranscoderFormatError(
            f"{path}: corrupt safetensors file (data section ends at byte {cursor}, file has "
            f"{size} bytes; truncated or padded)"
        )


# ---------------------------------------------------------------------------------------------
# streaming writer


@dataclass
class TensorSource:
    """A tensor to write, given as shape + dtype + a generator of C-ordered chunks.

    Chunks are split along the first axis; their concatenation must be the whole tensor.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    chunks: Callable[[], Iterable[torch.Tensor]]

    @classmethod
    def of(cls, tensor: torch.Tensor) -> TensorSource:
        tensor = tensor.detach()
        return cls(tuple(tensor.shape), tensor.dtype, lambda: [tensor])


def write_safetensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, TensorSource | torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a safetensors file that the official library reads, one chunk at a time.

    Written to a temporary name, fsynced and renamed (`io.atomic.atomic_files`), so an interrupted
    or failed save never leaves a file that looks complete, nor a temp file, and the old file
    stays until the new one is whole.
    """
    sources = {k: v if isinstance(v, TensorSource) else TensorSource.of(v) for k, v in tensors.items()}
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, src in sources.items():
        if src.dtype not in _TAG_OF:
            raise TranscoderFormatError(f"{path}: cannot write tensor {name!r} of dtype {src.dtype}")
        nbytes = int(np.prod(src.shape, dtype=np.int64)) * torch.empty((), dtype=src.dtype).element_size()
        header[name] = {"dtype": _TAG_OF[src.dtype], "shape": list(src.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8-byte alignment
    path = Path(path)
    with atomic_files(path) as (tmp,), open(tmp, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)))
        handle.write(raw)
        for name, src in sources.items():
            _write_chunks(handle, name, src, path)


def _write_chunks(handle: object, name: str, src: TensorSource, path: Path) -> None:
    rows = 0
    for chunk in src.chunks():
        chunk = chunk.detach().to("cpu").contiguous()
        if chunk.dtype != src.dtype or tuple(chunk.shape[1:]) != tuple(src.shape[1:]):
            raise TranscoderFormatError(f"{path}: chunk of {name!r} does not match its declared shape")
        rows += chunk.shape[0] if chunk.dim() else 1
        array = chunk.view(torch.uint16).numpy() if chunk.dtype == torch.bfloat16 else chunk.numpy()
        handle.write(array.tobytes(order="C"))  # type: ignore[attr-defined]
    expected = src.shape[0] if src.shape else 1
    if rows != expected:
        raise TranscoderFormatError(f"{path}: wrote {rows} rows of {name!r}, expected {expected}")
