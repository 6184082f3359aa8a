"""circuit-atlas's own transcoder format: one JSON config + safetensors files
(`docs/formats.md` §7).

Why a format of our own when circuit-tracer's exists: its config cannot say everything a set
needs (TopK k for local sets, CLT skips, the model it belongs to, sizes to check before reading
gigabytes), and its loader picks formats by repo-name substrings. Ours states all of it
explicitly and is versioned.

Layout of a directory:
- `circuit_atlas_transcoders.json`: {"format": "circuit-atlas-transcoders", "version": 1, "kind",
  "n_layers", "d_model", "n_features", "activation", "k", "input_hook", "output_hook",
  "model_name", "scan", "dtype", "skip"}, and "layers" (a sorted list of layer numbers) only in a
  *partial* set: `circuit-atlas train --layers` of some layers of an n_layers model writes files
  for those layers alone. A partial set cannot be traced with (`load_transcoders` says so);
  training reads it to start from or to complete it (`read_native_layers`). Written last, so its
  presence marks a complete save.
- `encoder_{l}.safetensors`: `W_enc [F, d]`, `b_enc [F]`, `b_dec [d]` (bias of target layer l),
  `threshold [F]` (JumpReLU only), `W_skip [d_out, d_in]` applied as `x · W_skipᵀ` (skip only;
  the same convention for PLT and CLT).
- `decoder_{l}.safetensors`: `W_dec [F, T_l, d]`, `T_l = 1` (PLT) or `L − l` (CLT); offset j
  writes to target layer l + j. Separate from the encoder so it can stay memory-mapped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from circuit_atlas.errors import TranscoderFormatError
from circuit_atlas.io.atomic import atomic_write_json
from circuit_atlas.io.dtypes import dtype_name
from circuit_atlas.transcoders.decoders import read_decoder
from circuit_atlas.transcoders.encoders import encoder_source, read_encoder
from circuit_atlas.transcoders.parts import KINDS, LayerParts, ReadOptions, SetParts, progress
from circuit_atlas.transcoders.refs import TranscoderRef, fetch_weights
from circuit_atlas.transcoders.safetensors_io import SafetensorsFile, TensorSource, write_safetensors
from circuit_atlas.transcoders.validation import check_keys, read_tensor

if TYPE_CHECKING:  # for annotations only: core imports this module for `save_native`
    from circuit_atlas.transcoders.core import Transcoders

CONFIG_FILE = "circuit_atlas_transcoders.json"
FORMAT_NAME = "circuit-atlas-transcoders"
FORMAT_VERSION = 1
WEIGHT_PATTERNS = ("encoder_*.safetensors", "decoder_*.safetensors")
_DTYPE_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "float64": torch.float64}


# ---------------------------------------------------------------------------------------------
# writer


def save_native(tc: Transcoders, directory: str | Path, *, layer_numbers: list[int] | None = None,
                n_model_layers: int | None = None) -> None:
    """Write `tc` (decoders streamed chunk by chunk, so lazy sets convert in bounded memory).

    `layer_numbers` / `n_model_layers` write a partial set: layer i of `tc` is layer
    `layer_numbers[i]` of an `n_model_layers`-layer model (PLT only; see the module docstring).
    """
    directory = Path(directory)
    numbers = list(range(tc.n_layers)) if layer_numbers is None else list(layer_numbers)
    total = tc.n_layers if n_model_layers is None else n_model_layers
    partial = numbers != list(range(total))
    if len(numbers) != tc.n_layers or sorted(set(numbers)) != numbers or \
            not all(0 <= n < total for n in numbers):
        raise TranscoderFormatError(f"layer numbers {numbers} do not fit a {tc.n_layers}-layer "
                                    f"set of a {total}-layer model")
    if partial and tc.kind != "plt":
        raise TranscoderFormatError("only per-layer transcoders can be saved as a partial set")
    tc.check_output_dir(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).unlink(missing_ok=True)
    for old in [*directory.glob("encoder_*.safetensors"), *directory.glob("decoder_*.safetensors")]:
        old.unlink()
    for layer in progress(range(tc.n_layers), "writing transcoders"):
        number = numbers[layer]
        write_safetensors(directory / f"encoder_{number}.safetensors", _encoder_tensors(tc, layer))
        write_safetensors(directory / f"decoder_{number}.safetensors", {"W_dec": _decoder_source(tc, layer)})
    config = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "kind": tc.kind,
        "n_layers": total, "d_model": tc.d_model, "n_features": tc.n_features,
        "activation": tc.activation_name, "k": tc.k,
        "input_hook": tc.input_hook, "output_hook": tc.output_hook,
        "model_name": tc.model_name, "scan": _portable_scan(tc.scan), "dtype": dtype_name(tc.dtype), "skip": tc.has_skip,
    }
    if partial:
        config["layers"] = numbers
    atomic_write_json(directory / CONFIG_FILE, config, indent=2)  # last: marks a complete save


def _portable_scan(scan: str | None) -> str | None:
    """A local set's scan is its absolute path; stored, it would point at the old location."""
    return None if scan is None or Path(scan).is_absolute() else scan


def _encoder_tensors(tc: Transcoders, layer: int) -> dict[str, torch.Tensor | TensorSource]:
    tensors: dict[str, torch.Tensor | TensorSource] = {
        "W_enc": encoder_source(tc.encoder_store(layer), tc.dtype),
        "b_enc": tc.encoder_bias(layer), "b_dec": tc.decoder_bias(layer),
    }
    threshold, skip = tc.threshold(layer), tc.skip_weight(layer)
    if threshold is not None:
        tensors["threshold"] = threshold
    if skip is not None:
        tensors["W_skip"] = skip
    return tensors


def _decoder_source(tc: Transcoders, layer: int) -> TensorSource:
    store = tc.decoder_store(layer)

    def chunks() -> Any:
        for chunk in store.chunks(256 << 20):
            yield chunk.to(tc.dtype)

    return TensorSource((store.n_features, store.n_targets, store.d_model), tc.dtype, chunks)


# ---------------------------------------------------------------------------------------------
# reader


def read_native_config(path: Path) -> dict[str, Any]:
    """Parse and type-check the JSON config; each error names the file and the key."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TranscoderFormatError(f"{path}: cannot parse JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        raise TranscoderFormatError(f"{path}: key 'format' must be {FORMAT_NAME!r}")
    version = config.get("version")
    if not isinstance(version, int) or version < 1:
        raise TranscoderFormatError(f"{path}: key 'version' must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise TranscoderFormatError(
            f"{path}: format version {version} is newer than this circuit-atlas reads ({FORMAT_VERSION}); upgrade"
        )
    _expect(path, config, "kind", str, choices=KINDS)
    for key in ("n_layers", "d_model", "n_features"):
        _expect(path, config, key, int, positive=True)
    for key in ("input_hook", "output_hook", "activation"):
        _expect(path, config, key, str)
    for key in ("model_name", "scan"):
        _expect(path, config, key, str, optional=True)
    _expect(path, config, "k", int, optional=True, positive=True)
    _expect(path, config, "dtype", str, choices=tuple(_DTYPE_NAMES))
    _expect(path, config, "skip", bool)
    layers = config.get("layers")
    if layers is not None:
        ok = isinstance(layers, list) and layers and all(
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n < config["n_layers"]
            for n in layers) and sorted(set(layers)) == layers
        if not ok or config["kind"] != "plt":
            raise TranscoderFormatError(
                f"{path}: key 'layers' must be a sorted list of distinct layer numbers in "
                f"0..{config['n_layers'] - 1} (partial sets are per-layer), got {layers!r}")
    return config


def config_layers(config: dict[str, Any]) -> list[int]:
    """The layer numbers a directory holds (all of them unless it is a partial set)."""
    return list(config.get("layers") or range(config["n_layers"]))


def _expect(path: Path, config: dict[str, Any], key: str, kind: type, *, optional: bool = False,
            positive: bool = False, choices: tuple[str, ...] = ()) -> None:
    value = config.get(key)
    if value is None and optional:
        return
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    ok = ok and (not positive or value > 0) and (not choices or value in choices)
    if not ok:
        want = f"one of {list(choices)}" if choices else ("a positive " if positive else "a ") + kind.__name__
        raise TranscoderFormatError(f"{path}: key {key!r} must be {want}, got {value!r}")


def read_native(directory: Path, options: ReadOptions) -> SetParts:
    """Read a native folder; every file is checked against the config's sizes."""
    config_path = directory / CONFIG_FILE
    config = read_native_config(config_path)
    held = config_layers(config)
    if len(held) != config["n_layers"]:
        raise TranscoderFormatError(
            f"{directory} is a partial set: it holds layer(s) {', '.join(map(str, held))} of a "
            f"{config['n_layers']}-layer model (written by `circuit-atlas train --layers`), and "
            "tracing needs every layer; train the others with `circuit-atlas train --layers "
            f"<the rest> --init-from {directory}` to complete it")
    _check_no_extra_layers(directory, held)
    layers = [_read_layer(directory, layer, config, options)
              for layer in progress(range(config["n_layers"]), "reading transcoders")]
    return SetParts(
        config["kind"], layers, input_hook=config["input_hook"], output_hook=config["output_hook"],
        where=str(config_path), activation=config["activation"], k=config["k"],
        scan=config.get("scan"), model_name=config.get("model_name"),
    )


def read_native_layers(directory: Path, *, dtype: torch.dtype = torch.float32
                       ) -> tuple[dict[str, Any], dict[int, LayerParts]]:
    """The config and the layers (by layer number, eagerly read) of a native directory, partial
    or complete: what training needs to start from an existing set or to complete one."""
    config = read_native_config(directory / CONFIG_FILE)
    held = config_layers(config)
    _check_no_extra_layers(directory, held)
    options = ReadOptions(dtype=dtype, lazy_decoder=False)
    return config, {layer: _read_layer(directory, layer, config, options) for layer in held}


def fetch_native(ref: TranscoderRef, config_path: Path) -> tuple[Path, None]:
    """From the hub: the config is there; download the weight files beside it."""
    return fetch_weights(ref, [CONFIG_FILE, *WEIGHT_PATTERNS]), None


def _check_no_extra_layers(directory: Path, layers: list[int]) -> None:
    for prefix in ("encoder_", "decoder_"):
        for path in directory.glob(f"{prefix}*.safetensors"):
            suffix = path.name[len(prefix):-len(".safetensors")]
            if not suffix.isdigit() or int(suffix) not in layers:
                raise TranscoderFormatError(
                    f"{path}: unexpected file; {CONFIG_FILE} lists layers "
                    f"{', '.join(map(str, layers))}"
                )


def _layer_file(directory: Path, name: str) -> SafetensorsFile:
    path = directory / name
    if not path.is_file():
        raise TranscoderFormatError(f"{directory}: missing layer file {name}")
    return SafetensorsFile(path)


def _read_layer(directory: Path, layer: int, config: dict[str, Any],
                options: ReadOptions) -> LayerParts:
    dtype = options.dtype
    F, d, L = config["n_features"], config["d_model"], config["n_layers"]
    targets = 1 if config["kind"] == "plt" else L - layer
    enc = _layer_file(directory, f"encoder_{layer}.safetensors")
    dec = _layer_file(directory, f"decoder_{layer}.safetensors")
    jump = config["activation"] == "jumprelu"
    required = ["W_enc", "b_enc", "b_dec"] + (["threshold"] if jump else []) + (["W_skip"] if config["skip"] else [])
    check_keys(enc.path, enc.keys(), required)
    check_keys(dec.path, dec.keys(), ["W_dec"])
    _check_stored_dtype(enc, config)
    _check_stored_dtype(dec, config)
    parts = LayerParts(
        origin=str(enc.path),
        W_enc=read_encoder(enc, "W_enc", F, d, dtype, options.lazy_encoder,
                           meaning="[F, d] from the config"),
        b_enc=read_tensor(enc, "b_enc", [F], dtype),
        b_dec=read_tensor(enc, "b_dec", [d], dtype),
        threshold=read_tensor(enc, "threshold", [F], dtype) if jump else None,
        W_skip=read_tensor(enc, "W_skip", [d, d], dtype, "[d_out, d_in]") if config["skip"] else None,
        W_dec=torch.empty(0),
    )
    meaning = f"[F, T, d] with T = {'1 (PLT)' if targets == 1 and config['kind'] == 'plt' else f'L - {layer}'}"
    parts.W_dec = read_decoder(dec, "W_dec", [F, targets, d], dtype, options.lazy_decoder, meaning)
    return parts


def _check_stored_dtype(file: SafetensorsFile, config: dict[str, Any]) -> None:
    expected = _DTYPE_NAMES[config["dtype"]]
    for name in file.keys():
        actual = file.info(name).torch_dtype
        if actual is not None and actual.is_floating_point and actual != expected:
            raise TranscoderFormatError(
                f"{file.path}: tensor {name!r} is stored as {dtype_name(actual)}, config says {config['dtype']}"
            )
