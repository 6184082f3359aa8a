"""circuit-tracer folders: `config.yaml` + per-layer files (`docs/formats.md` §5).

Reading dispatches on the *contents* (file suffix and tensor names), not on substrings of the
repo id as circuit-tracer does (§5.2): a `transcoders` list may point at circuit-tracer `layer_i`
files, GemmaScope `params.npz` files or GemmaScope-2 safetensors, and a local copy of a
GemmaScope set works the same as the hub original.

Where we read more than circuit-tracer (documented deviations, §9):
- `activation`/`k` in a local `config.yaml` are honoured (circuit-tracer drops them for local and
  cached sets, §5.5, which makes TopK sets unloadable there).
- a scalar `k` tensor in a PLT file (written by circuit-tracer's own TopK writer, rejected by its
  reader, §5.3) is accepted as TopK's k.
- a GemmaScope-2 CLT reads all listed layers (§6.3).

Writing produces files circuit-tracer itself loads (§5.6): no `k` tensor (k goes into
config.yaml), no skip for CLTs (its CLT loader cannot read one), and config keys it understands.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from circuit_atlas.errors import TranscoderFormatError, TranscoderFormatWarning
from circuit_atlas.transcoders.decoders import read_decoder
from circuit_atlas.transcoders.encoders import encoder_source, read_encoder
from circuit_atlas.transcoders.gemmascope import (
    is_gemmascope2_file,
    read_gs2_clt,
    read_gs2_plt_layer,
    read_npz_layer,
)
from circuit_atlas.transcoders.parts import EntryResolver, LayerParts, ReadOptions, SetParts, progress
from circuit_atlas.transcoders.refs import TranscoderRef, fetch_weights, hub_file, parse_hf_file_uri
from circuit_atlas.transcoders.safetensors_io import SafetensorsFile, TensorSource, write_safetensors
from circuit_atlas.transcoders.validation import (
    check_keys,
    check_layer_sequence,
    check_shape,
    read_tensor,
)

if TYPE_CHECKING:  # for annotations only: core imports this module for `save_circuit_tracer`
    from circuit_atlas.transcoders.core import Transcoders

CONFIG_FILE = "config.yaml"
# The keys of `docs/formats.md` §5.1, plus those circuit-tracer writes into cache entries
# (informational: repo_id, revision, subfolder).
CONFIG_KEYS = ("model_kind", "feature_input_hook", "feature_output_hook", "transcoders",
               "model_name", "activation", "k", "scan", "repo_id", "revision", "subfolder")
KIND_NAMES = {"transcoder_set": "plt", "cross_layer_transcoder": "clt"}
PLT_THRESHOLD = "activation_function.threshold"
# Weight files of a folder whose config lists none (`docs/formats.md` §5.2).
WEIGHT_PATTERNS = {"plt": ["layer_*.safetensors"], "clt": ["W_enc_*.safetensors", "W_dec_*.safetensors"]}


def read_config(path: Path) -> dict[str, Any]:
    """Parse and check `config.yaml`; errors name the file and the key."""
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise TranscoderFormatError(f"{path}: cannot parse YAML ({exc})") from None
    if not isinstance(config, dict):
        raise TranscoderFormatError(f"{path}: expected a mapping of keys, got {type(config).__name__}")
    kind = config.get("model_kind")
    if kind not in KIND_NAMES:
        hint = " (legacy pre-2025-08 config? it lacks model_kind)" if kind is None else ""
        raise TranscoderFormatError(
            f"{path}: key 'model_kind' must be 'transcoder_set' or 'cross_layer_transcoder', got {kind!r}{hint}"
        )
    for key in ("feature_input_hook", "feature_output_hook"):
        if not isinstance(config.get(key), str) or not config[key]:
            raise TranscoderFormatError(f"{path}: key {key!r} (a hook name such as 'mlp.hook_in') is missing")
    listed = config.get("transcoders")
    if listed is not None and (not isinstance(listed, list) or not all(isinstance(e, str) for e in listed)):
        raise TranscoderFormatError(f"{path}: key 'transcoders' must be a list of file paths or hf:// URIs")
    unknown = sorted(str(key) for key in config if key not in CONFIG_KEYS)
    if unknown:  # a misspelt key (`activaton: topk`) would otherwise change nothing, silently
        warnings.warn(TranscoderFormatWarning(
            f"{path}: ignoring unknown key(s) {', '.join(map(repr, unknown))}; the keys read are "
            f"{', '.join(CONFIG_KEYS)}"), stacklevel=2)
    return config


def local_entry_resolver(directory: Path, config_path: Path) -> EntryResolver:
    """Resolve `transcoders` entries that are local paths (relative ones against the config dir)."""

    def resolve(index: int, entry: str) -> Path:
        if entry.startswith("hf://"):
            return hub_file(*parse_hf_file_uri(entry))
        path = Path(entry).expanduser()
        candidates = [path] if path.is_absolute() else [directory / path, path]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise TranscoderFormatError(f"{config_path}: transcoders[{index}] file {entry!r} not found")

    return resolve


def read_directory(directory: Path, options: ReadOptions) -> SetParts:
    """Read a circuit-tracer style folder (hub snapshot, cache entry or hand-made).

    `options.lazy_encoder` applies to safetensors layer files; GemmaScope `params.npz` layers are
    read whole.
    """
    config_path = directory / CONFIG_FILE
    config = read_config(config_path)
    resolve = options.resolve or local_entry_resolver(directory, config_path)
    kind = KIND_NAMES[config["model_kind"]]
    listed = config.get("transcoders")
    if kind == "plt":
        layers = _read_plt_layers(directory, listed, resolve, options)
    else:
        layers = _read_clt_layers(directory, config_path, listed, resolve, options)
    return SetParts(
        kind, layers, input_hook=config["feature_input_hook"],
        output_hook=config["feature_output_hook"], where=str(config_path),
        activation=config.get("activation"), k=config.get("k"),
        scan=config.get("scan"), model_name=config.get("model_name"),
    )


def fetch_from_hub(ref: TranscoderRef, config_path: Path) -> tuple[Path, EntryResolver | None]:
    """From the hub, with the config downloaded: what else to fetch (`docs/formats.md` §5.2).

    A config that lists files (and is not a plain CLT, which ignores its list) is read where it
    is, its entries downloaded one by one through the returned resolver; otherwise the folder's
    weight files are downloaded by pattern."""
    config = read_config(config_path)
    resolve = hub_entry_resolver(ref)
    if config.get("transcoders") and not _ignores_list(config, resolve):
        return config_path.parent, resolve
    patterns = WEIGHT_PATTERNS[KIND_NAMES[config["model_kind"]]]
    return fetch_weights(ref, [CONFIG_FILE, *patterns]), None


def _ignores_list(config: dict, resolve: EntryResolver) -> bool:
    """A plain CLT ignores `transcoders`; a GemmaScope-2 CLT needs it (`docs/formats.md` §5.1).

    Decided by the first listed file's tensor names (it is needed in the GemmaScope-2 case anyway).
    """
    if config["model_kind"] != "cross_layer_transcoder":
        return False
    return not is_gemmascope2_file(SafetensorsFile(resolve(0, config["transcoders"][0])))


def hub_entry_resolver(ref: TranscoderRef) -> EntryResolver:
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


def _numbered(directory: Path, prefix: str) -> dict[int, Path]:
    """`{i: path}` for files `<prefix><i>.safetensors`; a non-integer suffix is an error."""
    found: dict[int, Path] = {}
    for path in directory.glob(f"{prefix}*.safetensors"):
        match = re.fullmatch(re.escape(prefix) + r"(\d+)\.safetensors", path.name)
        if match is None:
            raise TranscoderFormatError(f"{path}: file name must be {prefix}<layer number>.safetensors")
        found[int(match.group(1))] = path
    return found


def _read_plt_layers(directory: Path, listed: list[str] | None, resolve: EntryResolver,
                     options: ReadOptions) -> list[LayerParts]:
    if listed:
        paths = [resolve(i, entry) for i, entry in enumerate(listed)]
    else:
        files = _numbered(directory, "layer_")
        n = check_layer_sequence(directory, files, "layer_{i}.safetensors")
        paths = [files[i] for i in range(n)]
    parts = []
    for path in progress(paths, "reading transcoders"):
        if path.suffix == ".npz":
            parts.append(read_npz_layer(path, options.dtype))
            continue
        file = SafetensorsFile(path)
        reader = read_gs2_plt_layer if is_gemmascope2_file(file) else read_plt_layer
        parts.append(reader(file, options))
    return parts


def read_plt_layer(file: SafetensorsFile, options: ReadOptions) -> LayerParts:
    """One circuit-tracer PLT file (`docs/formats.md` §5.3): rows per feature for W_enc and W_dec."""
    dtype = options.dtype
    check_keys(file.path, file.keys(), ["W_enc", "W_dec", "b_enc", "b_dec"], [PLT_THRESHOLD, "W_skip", "k"])
    check_shape(file.path, "W_enc", file.info("W_enc").shape, [None, None], "[F, d]")
    F, d = (int(s) for s in file.info("W_enc").shape)
    parts = LayerParts(
        origin=str(file.path),
        W_enc=read_encoder(file, "W_enc", F, d, dtype, options.lazy_encoder),
        b_enc=read_tensor(file, "b_enc", [F], dtype),
        b_dec=read_tensor(file, "b_dec", [d], dtype),
        W_dec=torch.empty(0),
        threshold=read_tensor(file, PLT_THRESHOLD, [F], dtype) if PLT_THRESHOLD in file else None,
        W_skip=read_tensor(file, "W_skip", [d, d], dtype, "[d_out, d_in]") if "W_skip" in file else None,
        k=_read_k(file) if "k" in file else None,
    )
    parts.W_dec = read_decoder(file, "W_dec", [F, d], dtype, options.lazy_decoder, "[F, d]")
    return parts


def _read_k(file: SafetensorsFile) -> int:
    info = file.info("k")
    tensor = file.read("k")
    if tensor.numel() != 1 or info.torch_dtype is None or info.torch_dtype.is_floating_point:
        raise TranscoderFormatError(f"{file.path}: tensor 'k' must be a scalar integer (TopK k)")
    return int(tensor.reshape(()))


def _read_clt_layers(directory: Path, config_path: Path, listed: list[str] | None,
                     resolve: EntryResolver, options: ReadOptions) -> list[LayerParts]:
    if listed:
        first = SafetensorsFile(resolve(0, listed[0]))
        if is_gemmascope2_file(first):
            files = [first] + [SafetensorsFile(resolve(i, e)) for i, e in enumerate(listed[1:], 1)]
            return read_gs2_clt(files, options, str(config_path))
        # circuit-tracer ignores the list for a normal CLT (`docs/formats.md` §5.1); so do we.
    enc = _numbered(directory, "W_enc_")
    dec = _numbered(directory, "W_dec_")
    n_layers = check_layer_sequence(directory, enc, "W_enc_{i}.safetensors")
    check_layer_sequence(directory, dec, "W_dec_{i}.safetensors")
    for i in set(range(n_layers)) ^ set(dec):
        name = f"W_dec_{i}.safetensors" if i not in dec else f"W_enc_{i}.safetensors"
        raise TranscoderFormatError(f"{directory}: missing layer file {name} (W_enc_* and W_dec_* must pair up)")
    if (directory / "W_skip.safetensors").exists():
        warnings.warn(TranscoderFormatWarning(
            f"{directory / 'W_skip.safetensors'}: ignored, as circuit-tracer's CLT loader does "
            "(docs/formats.md §5.4)"), stacklevel=3)
    return [_read_clt_layer(enc[i], dec[i], i, n_layers, options)
            for i in progress(range(n_layers), "reading transcoders")]


def _read_clt_layer(enc_path: Path, dec_path: Path, i: int, n_layers: int,
                    options: ReadOptions) -> LayerParts:
    dtype = options.dtype
    enc, dec = SafetensorsFile(enc_path), SafetensorsFile(dec_path)
    w, th = f"W_enc_{i}", f"threshold_{i}"
    check_keys(enc.path, enc.keys(), [w, f"b_enc_{i}", f"b_dec_{i}"], [th])
    check_keys(dec.path, dec.keys(), [f"W_dec_{i}"])
    check_shape(enc.path, w, enc.info(w).shape, [None, None], "[F, d]")
    F, d = (int(s) for s in enc.info(w).shape)
    dec_shape = [F, n_layers - i, d]
    meaning = f"[F, L - {i}, d]: one row per feature, one slice per target layer {i}..{n_layers - 1}"
    parts = LayerParts(
        origin=str(enc.path),
        W_enc=read_encoder(enc, w, F, d, dtype, options.lazy_encoder),
        b_enc=read_tensor(enc, f"b_enc_{i}", [F], dtype),
        b_dec=read_tensor(enc, f"b_dec_{i}", [d], dtype),
        threshold=read_tensor(enc, th, [F], dtype) if th in enc else None,
        W_dec=torch.empty(0),
    )
    parts.W_dec = read_decoder(dec, f"W_dec_{i}", dec_shape, dtype, options.lazy_decoder, meaning)
    return parts


# ---------------------------------------------------------------------------------------------
# writer


def save_circuit_tracer(tc: Transcoders, directory: str | Path) -> None:
    """Write `tc` so that circuit-tracer loads it as a local folder (`docs/formats.md` §5.5).

    Refuses what circuit-tracer cannot represent instead of writing a set it would misread:
    TopK or skip connections on a CLT.
    """
    directory = Path(directory)
    if tc.kind == "clt" and (tc.has_skip or tc.activation_name == "topk"):
        what = "skip connections" if tc.has_skip else "TopK activations"
        raise TranscoderFormatError(
            f"circuit-tracer's CLT format (W_enc_i/W_dec_i files) cannot hold {what}; "
            "use save_native instead"
        )
    tc.check_output_dir(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for old in [*directory.glob("layer_*.safetensors"), *directory.glob("W_enc_*.safetensors"),
                *directory.glob("W_dec_*.safetensors")]:
        old.unlink()  # a stale layer_7 from a previous, larger save would be read as a layer
    writer = _write_plt_layer if tc.kind == "plt" else _write_clt_layer
    for layer in progress(range(tc.n_layers), "writing circuit-tracer files"):
        writer(tc, layer, directory)
    _write_config(tc, directory)  # last: its presence marks a complete folder (§5.5)


def _decoder_source(tc: Transcoders, layer: int, squeeze: bool) -> TensorSource:
    store = tc.decoder_store(layer)
    shape = (store.n_features, store.d_model) if squeeze else (store.n_features, store.n_targets, store.d_model)

    def chunks() -> Any:
        for chunk in store.chunks(256 << 20):
            chunk = chunk.to(tc.dtype)
            yield chunk[:, 0] if squeeze else chunk

    return TensorSource(shape, tc.dtype, chunks)


def _write_plt_layer(tc: Transcoders, layer: int, directory: Path) -> None:
    tensors: dict[str, Any] = {
        "W_enc": encoder_source(tc.encoder_store(layer), tc.dtype),
        "W_dec": _decoder_source(tc, layer, squeeze=True),
        "b_enc": tc.encoder_bias(layer), "b_dec": tc.decoder_bias(layer),
    }
    if tc.threshold(layer) is not None:
        tensors[PLT_THRESHOLD] = tc.threshold(layer)
    if tc.skip_weight(layer) is not None:
        tensors["W_skip"] = tc.skip_weight(layer)
    write_safetensors(directory / f"layer_{layer}.safetensors", tensors)


def _write_clt_layer(tc: Transcoders, layer: int, directory: Path) -> None:
    i = layer
    tensors: dict[str, Any] = {
        f"W_enc_{i}": encoder_source(tc.encoder_store(i), tc.dtype),
        f"b_enc_{i}": tc.encoder_bias(i), f"b_dec_{i}": tc.decoder_bias(i),
    }
    if tc.threshold(i) is not None:
        tensors[f"threshold_{i}"] = tc.threshold(i)
    write_safetensors(directory / f"W_enc_{i}.safetensors", tensors)
    write_safetensors(directory / f"W_dec_{i}.safetensors", {f"W_dec_{i}": _decoder_source(tc, i, squeeze=False)})


def _write_config(tc: Transcoders, directory: Path) -> None:
    config: dict[str, Any] = {
        "model_kind": "transcoder_set" if tc.kind == "plt" else "cross_layer_transcoder",
        "feature_input_hook": tc.input_hook,
        "feature_output_hook": tc.output_hook,
    }
    if tc.model_name:
        config["model_name"] = tc.model_name
    if tc.activation_name == "topk":
        config["activation"] = "topk"
        config["k"] = tc.k
    elif tc.activation_name == "relu" and tc.kind == "plt":
        config["activation"] = "relu"
    if tc.scan and not Path(tc.scan).is_absolute():
        config["scan"] = tc.scan  # an absolute local path would be stale elsewhere
    text = yaml.safe_dump(config, sort_keys=False)
    (directory / CONFIG_FILE).write_text(text, encoding="utf-8")
