"""Arguments several subcommands share: which model and transcoders, which prompt.

One definition keeps the flags, their help and their parsing identical across `trace`, `steer`
and the other commands that load a replacement model.
"""

from __future__ import annotations

import argparse

from circuit_atlas.errors import CircuitAtlasError

DTYPES = ("float32", "bfloat16", "float16")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --transcoders (required), --dtype, --device."""
    parser.add_argument("--model", required=True, help="hub id, local directory, or 'demo'")
    parser.add_argument(
        "--transcoders", required=True, help="hub id (repo[/sub][@rev]), local directory, or 'demo'"
    )
    parser.add_argument("--dtype", choices=DTYPES, help="model dtype (default: float32)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, mps ... (default: cuda if available)")


def add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    """--prompt TEXT | --token-ids 1,2,3 (one of them required)."""
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="prompt text (BOS is prepended when the tokenizer has one)")
    prompt.add_argument("--token-ids", help="comma-separated token ids, used exactly as given")


def parse_token_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise CircuitAtlasError(f"--token-ids must be comma-separated integers, got {text!r}") from None
    if not ids:
        raise CircuitAtlasError("--token-ids is empty")
    return ids


def prompt_from_args(args: argparse.Namespace) -> str | list[int]:
    """The prompt text, or the explicit token ids."""
    return parse_token_ids(args.token_ids) if args.token_ids else args.prompt
