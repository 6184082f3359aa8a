"""Arguments several subcommands share: which model and transcoders, which prompt.

One definition keeps the flags, their help and their parsing identical across `trace`, `steer`
and the other commands that load a replacement model.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from circuit_atlas.errors import CircuitAtlasError, PromptError

DTYPES = ("float32", "bfloat16", "float16")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --transcoders (required), --lazy-encoder, --dtype, --device, --device-map,
    --offload-folder."""
    parser.add_argument("--model", required=True, help="hub id, local directory, or 'demo'")
    parser.add_argument(
        "--transcoders", required=True, help="hub id (repo[/sub][@rev]), local directory, or 'demo'"
    )
    add_lazy_encoder_argument(parser)
    parser.add_argument("--dtype", choices=DTYPES, help="model dtype (default: float32)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, mps ... (default: cuda if available)")
    add_device_map_arguments(parser)


def add_device_map_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--device-map and --offload-folder: spread a model too large for one device."""
    parser.add_argument(
        "--device-map", metavar="MAP",
        help="spread the model over several GPUs (or offload part of it) with accelerate, "
             "instead of --device: auto, balanced, balanced_low_0, sequential, or a JSON object "
             "of module path -> GPU index, 'cpu' or 'disk', e.g. "
             '\'{"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, '
             '"model.norm": 1, "lm_head": 1}\' (needs pip install "circuit-atlas[multi-gpu]")',
    )
    parser.add_argument(
        "--offload-folder", metavar="DIR",
        help="where weights of modules the --device-map sends to 'disk' are written",
    )


def model_placement(args: argparse.Namespace) -> dict:
    """`load`'s device, device_map and offload_folder from --device / --device-map /
    --offload-folder, checked before any model is read."""
    from circuit_atlas.models.placement import parse_device_map

    text = getattr(args, "device_map", None)
    folder = getattr(args, "offload_folder", None)
    if text is None or not str(text).strip():
        if folder is not None:
            raise CircuitAtlasError("--offload-folder only applies with a --device-map that "
                                    "sends modules to 'disk'")
        return {"device": resolve_device(args.device)}
    if args.device is not None:
        raise CircuitAtlasError("give either --device or --device-map, not both: the map decides "
                                "where every layer goes")
    return {"device": None, "device_map": parse_device_map(text, what="--device-map"),
            "offload_folder": folder}


def add_lazy_encoder_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--lazy-encoder, for commands that declare --transcoders themselves."""
    parser.add_argument(
        "--lazy-encoder", action="store_true",
        help="keep transcoder encoders on disk and read one layer at a time (for sets whose "
             "encoders do not fit the device; every forward pass reads all of them again, which "
             "is fine for tracing and steering but slow over a whole corpus)",
    )


def add_prompt_arguments(parser: argparse.ArgumentParser, *, batch: bool = False) -> None:
    """--prompt TEXT | --token-ids 1,2,3 (one of them required); with `batch`, also
    --prompts FILE (a JSON Lines file, `cli/prompt_file.py`)."""
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="prompt text (BOS is prepended when the tokenizer has one)")
    prompt.add_argument("--token-ids", help="comma-separated token ids, used exactly as given")
    if batch:
        prompt.add_argument("--prompts", type=Path, metavar="FILE",
                            help="a JSON Lines file of prompts, one graph each (see below)")


def parse_token_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise CircuitAtlasError(f"--token-ids must be comma-separated integers, got {text!r}") from None
    if not ids:
        raise CircuitAtlasError("--token-ids is empty")
    return ids


def prompt_from_args(args: argparse.Namespace) -> str | list[int]:
    """The prompt text, or the explicit token ids (`--token-ids ""` is an empty list, not an
    absent flag); text that is only whitespace is refused: it would trace a graph of blanks."""
    if getattr(args, "token_ids", None) is not None:
        return parse_token_ids(args.token_ids)
    if not args.prompt.strip():
        raise PromptError(f"--prompt {args.prompt!r} holds no words; give the text to trace")
    return args.prompt


# ---------------------------------------------------------------------- checks before loading
def resolve_device(text: str | None) -> str:
    """The device a command runs on: `text` checked against this machine, or cuda when a GPU is
    available and cpu otherwise.

    Checked before any model is read, so `--device cuda` on a machine without a GPU (or a typo
    such as `--device cdua`) is one line naming the device and what is available, not a torch
    traceback after minutes of loading.
    """
    import torch

    from circuit_atlas.models.language_model import check_device

    if text is None or not str(text).strip():
        return "cuda" if torch.cuda.is_available() else "cpu"
    text = str(text).strip()
    check_device(text, what="--device")
    return text


def resolve_rank_device(device: str) -> str:
    """Under torchrun, bare "cuda" becomes this rank's GPU (the one the process group chose), so
    ranks on one machine never share a card; any other device is kept."""
    import torch

    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1 and torch.cuda.is_available():
        return f"cuda:{torch.cuda.current_device()}"
    return device


def rank_placement(args: argparse.Namespace, world_size: int) -> dict:
    """`model_placement` for commands that deal work out to torchrun ranks: bare cuda becomes
    this rank's GPU, and a --device-map (which would give every rank all GPUs) is refused."""
    placement = model_placement(args)
    if placement["device"] is None and world_size > 1:
        raise CircuitAtlasError("--device-map cannot be used under torchrun: each rank would "
                                "spread its copy over every GPU; use one process instead")
    if placement["device"] is not None:
        placement["device"] = resolve_rank_device(placement["device"])
    return placement


def _first_existing(path: Path) -> Path:
    """`path` or its nearest existing ancestor (the folder a mkdir -p would start from)."""
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _check_ancestors(path: Path, flag: str) -> None:
    existing = _first_existing(path.parent)
    if existing.exists() and not existing.is_dir():
        raise CircuitAtlasError(f"{flag} {path}: {existing} is a file, so nothing can be created under it")
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        raise CircuitAtlasError(f"{flag} {path}: cannot write in {existing} (permission denied)")


def check_output_dir(path: str | os.PathLike, flag: str) -> Path:
    """A folder a command will create or write into: it must be a folder or not exist yet, and be
    creatable. Checked up front so a slow run does not die at its last step."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise CircuitAtlasError(f"{flag} {path} is a file; give a folder (it is created if missing)")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise CircuitAtlasError(f"{flag} {path}: cannot write in this folder (permission denied)")
    else:
        _check_ancestors(path, flag)
    return path


def check_output_file(path: str | os.PathLike, flag: str) -> Path:
    """A file a command will write: it must not be a folder, and its folder must be creatable."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise CircuitAtlasError(f"{flag} {path} is a folder; give a file inside it, e.g. {path / 'NAME.json'}")
    _check_ancestors(path, flag)
    return path


def check_at_least(value: int | float, minimum: int | float, flag: str) -> None:
    """`flag` must be ≥ `minimum` (argparse only checks the type)."""
    if value < minimum:
        raise CircuitAtlasError(f"{flag} must be at least {minimum}, got {value}")
