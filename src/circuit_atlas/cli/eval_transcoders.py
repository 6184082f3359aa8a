"""`circuit-atlas eval-transcoders`: reconstruction metrics and loss recovered of any set."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from circuit_atlas.cli.common import (add_lazy_encoder_argument, check_at_least, check_output_file,
                                      resolve_device)
from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.io.atomic import atomic_write_json

DEFAULT_CONTEXT_LENGTH = 128

EXAMPLE = """\
examples:
  circuit-atlas eval-transcoders --model google/gemma-2-2b --transcoders gemma --corpus held_out.jsonl
  circuit-atlas eval-transcoders --model ./my-model --transcoders runs/clt-8k/transcoders \\
      --corpus texts/ --windows 128 --json runs/clt-8k/eval-full.json
"""


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "eval-transcoders", help="print NMSE, L0, dead fraction per layer and loss recovered",
        description="Evaluate a transcoder set on text: per-layer NMSE / FVU / L0 / dead "
                    "fraction, and the next-token loss of the replacement model versus the "
                    "original (loss recovered, relative to zero-ablating every MLP).",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="hub id or local model directory")
    parser.add_argument("--transcoders", required=True, help="hub reference or local directory")
    parser.add_argument("--corpus", required=True, help="folder of .txt, a .txt or a .jsonl file")
    parser.add_argument("--text-field", default="text", help="JSONL field holding the text")
    parser.add_argument("--context-length", type=int, default=None,
                        help=f"tokens per window (default: {DEFAULT_CONTEXT_LENGTH}, or the model's "
                             "maximum positions when that is smaller)")
    parser.add_argument("--windows", type=int, default=64,
                        help="evaluate this many windows' worth of tokens (default 64)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per model pass (default 8)")
    parser.add_argument("--layout", default="auto", choices=("auto", "packed", "documents"),
                        help="packed: documents concatenated into full windows; documents: one "
                             "document per window, padding never scored; auto (default): "
                             "documents unless the model predicts packed text as well")
    parser.add_argument("--device", help="cpu, cuda, … (default: cuda if available)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--json", type=Path, help="also write the metrics to this JSON file")
    add_lazy_encoder_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_eval)
    return parser


def read_model_config(ref: str):
    """The model's (text) config alone, without weights, or None when it cannot be read here;
    the model load that follows then reports why."""
    from circuit_atlas.demo.bundle import resolve_model_ref

    ref = resolve_model_ref(ref)
    try:
        from transformers import AutoConfig

        local = Path(ref).expanduser()
        config = AutoConfig.from_pretrained(str(local) if local.is_dir() else ref)
    except Exception:  # noqa: BLE001 - any failure is reported by the real load
        return None
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def model_max_positions(ref: str) -> int | None:
    """The model's maximum positions from its config alone (no weights), or None."""
    config = read_model_config(ref)
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def context_length(requested: int | None, model: str) -> int:
    """The window length to evaluate: the request (or the default), clamped to the model's
    positions, saying so when it shrinks, so the reports name the length actually used."""
    if requested is not None:
        check_at_least(requested, 2, "--context-length")
    length = requested or DEFAULT_CONTEXT_LENGTH
    limit = model_max_positions(model)
    if limit is not None and length > limit:
        given = f"--context-length {requested}" if requested is not None else \
            f"the default context length {DEFAULT_CONTEXT_LENGTH}"
        print(f"note: {given} exceeds the {limit} positions of model {model}; "
              f"evaluating {limit}-token windows", file=sys.stderr)
        length = limit
    return length


def run_eval(args) -> int:
    from circuit_atlas.training.pipeline import run_eval_job

    check_at_least(args.windows, 1, "--windows")
    check_at_least(args.batch_size, 1, "--batch-size")
    if args.json is not None:
        check_output_file(args.json, "--json")
    if not Path(args.corpus).expanduser().exists():
        raise CircuitAtlasError(f"--corpus {args.corpus} does not exist")
    device = resolve_device(args.device)
    length = context_length(args.context_length, args.model)
    report = run_eval_job(args.model, args.transcoders, args.corpus, text_field=args.text_field,
                          context_length=length, windows=args.windows,
                          batch_size=args.batch_size, device=device, dtype=args.dtype,
                          progress=not args.quiet, lazy_encoder=args.lazy_encoder,
                          window_mode=args.layout)
    print(report.table())
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, report.to_json())
    return 0
