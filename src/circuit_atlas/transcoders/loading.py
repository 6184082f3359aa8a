"""`load_transcoders`: reference string -> local files -> the format's reader -> `Transcoders`.

A local folder is read by the format whose config file it holds; a hub reference downloads the
config first (trying each format's config name) and then only what that format asks for. Both
paths go through the format table (`formats.FORMATS`, `docs/formats.md` §10).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from circuit_atlas.errors import TranscoderFormatError
from circuit_atlas.io.dtypes import resolve_dtype
from circuit_atlas.transcoders.assemble import assemble
from circuit_atlas.transcoders.core import Transcoders
from circuit_atlas.transcoders.formats import config_files, format_for_config, format_of
from circuit_atlas.transcoders.parts import ReadOptions
from circuit_atlas.transcoders.refs import TranscoderRef, fetch_config, parse_reference

DEFAULT_DTYPE = torch.float32  # circuit-tracer's hub loader default too


def load_transcoders(ref: str | os.PathLike[str], *, device: torch.device | str | None = None,
                     dtype: torch.dtype | str | None = None, lazy_decoder: bool = True,
                     lazy_encoder: bool = False) -> Transcoders:
    """Load a transcoder set from a local directory or the Hugging Face hub.

    `ref`: a directory, `org/repo[/sub/folder][@revision]`, `hf://org/repo/sub?revision=rev`, or a
    preset (`gemma`, `llama`; `demo`, `demo-clt`, `demo-plt` for the bundled demo sets). `dtype`
    defaults to float32. With `lazy_decoder` (the default), decoders of safetensors formats stay
    memory-mapped and rows are read on demand. With `lazy_encoder`, encoders stay on disk too:
    each forward use reads one layer's encoder and releases it, and attribution reads only the
    rows it needs (for sets whose encoders do not fit the device). GemmaScope `params.npz`
    layers cannot be mapped and are always read whole; both flags are ignored for them.
    """
    parsed = parse_reference(ref if isinstance(ref, str) else Path(ref))
    options = ReadOptions(
        dtype=resolve_dtype(dtype, default=DEFAULT_DTYPE, error=TranscoderFormatError),
        lazy_decoder=lazy_decoder, lazy_encoder=lazy_encoder,
    )
    if parsed.local_path is not None:
        tc = load_directory(parsed.local_path, options, name=parsed.text.strip())
    else:
        tc = _load_from_hub(parsed, options)
    if device is not None:
        tc.to(device)
    return tc


def load_directory(directory: Path, options: ReadOptions | None = None, *,
                   scan: str | None = None, name: str | None = None) -> Transcoders:
    """Load a local folder in any format of the table; `scan` overrides the folder's own.

    A folder whose config names no scan is identified by `name`, the reference as the user gave
    it (default: `directory` as given). Never by its resolved path: the scan is written into
    graphs, stores and exports that get shared, where the host's folders are nobody's business
    and would be wrong on any other machine (`docs/formats.md` §2)."""
    options = options or ReadOptions()
    found = format_of(directory).read(directory, options)
    if found.scan is None:
        found = dataclasses.replace(found, scan=name or str(directory))
    return assemble(found, scan=scan)


def _load_from_hub(ref: TranscoderRef, options: ReadOptions) -> Transcoders:
    """The config first, then what its format asks for; the reference's scan wins over any the
    files carry (`docs/formats.md` §2)."""
    config_path = fetch_config(ref, config_files())
    fmt = format_for_config(config_path)
    directory, resolve = fmt.fetch(ref, config_path)
    found = fmt.read(directory, dataclasses.replace(options, resolve=resolve))
    return assemble(found, scan=ref.scan)
