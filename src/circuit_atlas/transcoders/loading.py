"""`load_transcoders`: reference string -> local files -> the right reader -> `Transcoders`.

A directory is recognised by its config file: `circuit_atlas_transcoders.json` (native) or
`config.yaml` (circuit-tracer, possibly listing GemmaScope files). Hub references download the
config first and then only the files that format needs.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from circuit_atlas.errors import TranscoderFormatError
from circuit_atlas.transcoders.circuit_tracer_format import EntryResolver, read_config, read_directory
from circuit_atlas.transcoders.core import Transcoders
from circuit_atlas.transcoders.gemmascope import is_gemmascope2_file
from circuit_atlas.transcoders.native import read_native
from circuit_atlas.transcoders.refs import (
    CT_CONFIG,
    NATIVE_CONFIG,
    TranscoderRef,
    fetch_config,
    fetch_weights,
    hub_file,
    parse_hf_file_uri,
    parse_reference,
)
from circuit_atlas.transcoders.safetensors_io import SafetensorsFile

DEFAULT_DTYPE = torch.float32  # the reference's hub loader default


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """Accept `torch.float16`, `"float16"`, `"torch.bfloat16"`, `"fp32"`...; floats only."""
    if dtype is None:
        return DEFAULT_DTYPE
    if isinstance(dtype, str):
        aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16",
                   "float": "float32", "fp64": "float64", "double": "float64"}
        name = dtype.strip().lower().removeprefix("torch.")
        value = getattr(torch, aliases.get(name, name), None)
        if not isinstance(value, torch.dtype):
            raise TranscoderFormatError(f"dtype {dtype!r} is not a torch dtype name")
        dtype = value
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TranscoderFormatError(f"dtype must be a floating torch dtype, got {dtype!r}")
    return dtype


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
    from circuit_atlas.demo.bundle import resolve_transcoders_ref

    if isinstance(ref, str):
        ref = resolve_transcoders_ref(ref)
    parsed = parse_reference(ref if isinstance(ref, str) else Path(ref))
    dtype = resolve_dtype(dtype)
    if parsed.local_path is not None:
        tc = load_directory(parsed.local_path, dtype=dtype, lazy_decoder=lazy_decoder, lazy_encoder=lazy_encoder)
    else:
        tc = _load_from_hub(parsed, dtype=dtype, lazy_decoder=lazy_decoder, lazy_encoder=lazy_encoder)
    if device is not None:
        tc.to(device)
    return tc


def load_directory(directory: Path, *, dtype: torch.dtype, lazy_decoder: bool,
                   scan: str | None = None, lazy_encoder: bool = False) -> Transcoders:
    """Load a local directory in any supported format."""
    lazy = {"lazy_decoder": lazy_decoder, "lazy_encoder": lazy_encoder}
    if (directory / NATIVE_CONFIG).is_file():
        return read_native(directory, dtype=dtype, scan=scan, **lazy)
    if (directory / CT_CONFIG).is_file():
        return read_directory(directory, dtype=dtype, scan=scan, **lazy)
    listing = sorted(p.name for p in directory.iterdir())[:10]
    raise TranscoderFormatError(
        f"{directory}: no {NATIVE_CONFIG} (circuit-atlas format) or {CT_CONFIG} (circuit-tracer format); "
        f"directory holds {listing}"
    )


def _load_from_hub(ref: TranscoderRef, *, dtype: torch.dtype, lazy_decoder: bool,
                   lazy_encoder: bool) -> Transcoders:
    lazy = {"lazy_decoder": lazy_decoder, "lazy_encoder": lazy_encoder}
    config_path = fetch_config(ref)
    if config_path.name == NATIVE_CONFIG:
        directory = fetch_weights(ref, [NATIVE_CONFIG, "encoder_*.safetensors", "decoder_*.safetensors"])
        return read_native(directory, dtype=dtype, scan=ref.scan, **lazy)
    config = read_config(config_path)
    resolve = _hub_entry_resolver(ref)
    if config.get("transcoders") and not _ignores_list(config, resolve):
        return read_directory(config_path.parent, dtype=dtype, scan=ref.scan, resolve=resolve, **lazy)
    patterns = ["layer_*.safetensors"] if config["model_kind"] == "transcoder_set" else [
        "W_enc_*.safetensors", "W_dec_*.safetensors"]
    directory = fetch_weights(ref, [CT_CONFIG, *patterns])
    return read_directory(directory, dtype=dtype, scan=ref.scan, **lazy)


def _ignores_list(config: dict, resolve: EntryResolver) -> bool:
    """A plain CLT ignores `transcoders` (reference §2.1); a GemmaScope-2 CLT needs it.

    Decided by the first listed file's tensor names (it is needed in the GemmaScope-2 case anyway).
    """
    if config["model_kind"] != "cross_layer_transcoder":
        return False
    return not is_gemmascope2_file(SafetensorsFile(resolve(0, config["transcoders"][0])))


def _hub_entry_resolver(ref: TranscoderRef) -> EntryResolver:
    """`transcoders` entries on the hub: hf:// URIs, or paths inside the config's repo."""

    def resolve(index: int, entry: str) -> Path:
        if entry.startswith("hf://"):
            return hub_file(*parse_hf_file_uri(entry))
        local = Path(entry).expanduser()
        if local.is_file():
            return local
        assert ref.repo_id is not None
        return hub_file(ref.repo_id, ref.in_repo(entry), ref.revision)

    return resolve
