"""Readers for Google's GemmaScope layouts (`docs/formats.md` §6).

These store the encoder as `[d, F]` (SAELens orientation) and the skip as `[d_in, d_out]`; we
transpose both on load into our in-memory orientation (encoder `[F, d]`, skip applied as
`x · W_skipᵀ`, §1), so the rest of the package sees one layout.

Unlike circuit-tracer, the safetensors variants keep lazy decoders: their decoders are already
one row per feature, so memory-mapping works (GemmaScope-2 CLT rows cover all L targets; source
`i` uses targets `i..L-1`). Lazy encoders work too: the `[d, F]` encoder is read column-wise.
The npz format is always read whole.
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from circuit_atlas.errors import TranscoderFormatError, TranscoderFormatWarning
from circuit_atlas.transcoders.decoders import MappedDecoder, read_decoder
from circuit_atlas.transcoders.encoders import read_encoder
from circuit_atlas.transcoders.parts import LayerParts, ReadOptions, progress
from circuit_atlas.transcoders.safetensors_io import SafetensorsFile
from circuit_atlas.transcoders.validation import (
    check_keys,
    check_mapped,
    check_shape,
    from_numpy,
    read_tensor,
)

GS_SKIP = "affine_skip_connection"


def is_gemmascope2_file(file: SafetensorsFile) -> bool:
    """GemmaScope-2 files use lower-case `w_enc`/`w_dec`; circuit-tracer files use `W_enc`."""
    return "w_enc" in file


def read_npz_layer(path: Path, dtype: torch.dtype) -> LayerParts:
    """GemmaScope v1 `params.npz` (§6.1): W_enc `[d, F]` transposed; threshold renamed."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except FileNotFoundError:
        raise TranscoderFormatError(f"{path}: file not found") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise TranscoderFormatError(f"{path}: corrupt or unreadable npz file ({exc})") from None
    check_keys(path, arrays, ["W_enc", "W_dec", "b_enc", "b_dec", "threshold"])
    enc_shape = arrays["W_enc"].shape
    check_shape(path, "W_enc", enc_shape, [None, None], "GemmaScope W_enc is [d, F]")
    d, F = (int(s) for s in enc_shape)
    return LayerParts(
        origin=str(path),
        W_enc=from_numpy(path, "W_enc", arrays, [d, F], dtype).T.contiguous(),
        W_dec=from_numpy(path, "W_dec", arrays, [F, d], dtype, "[F, d]"),
        b_enc=from_numpy(path, "b_enc", arrays, [F], dtype),
        b_dec=from_numpy(path, "b_dec", arrays, [d], dtype),
        threshold=from_numpy(path, "threshold", arrays, [F], dtype),
    )


def _encoder_side(file: SafetensorsFile, dtype: torch.dtype, lazy_encoder: bool) -> tuple[LayerParts, int, int]:
    info = file.info("w_enc")
    check_shape(file.path, "w_enc", info.shape, [None, None], "GemmaScope-2 w_enc is [d, F]")
    d, F = (int(s) for s in info.shape)
    skip = None
    if GS_SKIP in file:
        affine = read_tensor(file, GS_SKIP, [d, d], dtype, "[d_in, d_out]")
        skip = affine.T.contiguous()  # applied as x · affine == x · W_skipᵀ
    parts = LayerParts(
        origin=str(file.path),
        W_enc=read_encoder(file, "w_enc", F, d, dtype, lazy_encoder, transposed=True),
        b_enc=read_tensor(file, "b_enc", [F], dtype),
        b_dec=read_tensor(file, "b_dec", [d], dtype),
        threshold=read_tensor(file, "threshold", [F], dtype),
        W_dec=torch.empty(0),  # filled by the caller
        W_skip=skip,
    )
    return parts, d, F


def read_gs2_plt_layer(file: SafetensorsFile, options: ReadOptions) -> LayerParts:
    """GemmaScope-2 PLT file (§6.2)."""
    dtype = options.dtype
    check_keys(file.path, file.keys(), ["w_enc", "w_dec", "b_enc", "b_dec", "threshold"], [GS_SKIP])
    parts, d, F = _encoder_side(file, dtype, options.lazy_encoder)
    parts.W_dec = read_decoder(file, "w_dec", [F, d], dtype, options.lazy_decoder, "[F, d]")
    return parts


def read_gs2_clt(files: Sequence[SafetensorsFile], options: ReadOptions,
                 where: str) -> list[LayerParts]:
    """GemmaScope-2 CLT (§6.3), reading *all* listed layer files.

    circuit-tracer iterates `range(max(layer index))` and so drops the last layer. The files
    themselves say how many layers there are: `w_dec` is `[F, L, d]`. We take L from there,
    require L files, and warn if more are listed.
    """
    dtype, lazy_decoder = options.dtype, options.lazy_decoder
    first = files[0]
    check_shape(first.path, "w_dec", first.info("w_dec").shape, [None, None, None], "[F, L, d]")
    n_layers = int(first.info("w_dec").shape[1])
    if len(files) < n_layers:
        raise TranscoderFormatError(
            f"{where}: lists {len(files)} layer files but {first.path} tensor 'w_dec' writes to "
            f"{n_layers} layers; missing layer file(s) {len(files)}..{n_layers - 1}"
        )
    if len(files) > n_layers:
        warnings.warn(TranscoderFormatWarning(
            f"{where}: lists {len(files)} files for a {n_layers}-layer CLT; using the first {n_layers}"),
            stacklevel=3)
    layers = []
    for i, file in progress(list(enumerate(files[:n_layers])), "reading transcoders"):
        check_keys(file.path, file.keys(), ["w_enc", "w_dec", "b_enc", "b_dec", "threshold"], [GS_SKIP])
        parts, d, F = _encoder_side(file, dtype, options.lazy_encoder)
        check_mapped(file, "w_dec", [F, n_layers, d], "[F, L, d]: rows for every target layer")
        if lazy_decoder:
            parts.W_dec = MappedDecoder(file, "w_dec", target_start=i, dtype=dtype)
        else:
            parts.W_dec = read_tensor(file, "w_dec", [F, n_layers, d], dtype)[:, i:].contiguous()
        layers.append(parts)
    return layers
