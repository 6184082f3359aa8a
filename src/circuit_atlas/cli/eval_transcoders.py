"""`circuit-atlas eval-transcoders`: reconstruction metrics and loss recovered of any set."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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
    parser.add_argument("--context-length", type=int, default=128)
    parser.add_argument("--windows", type=int, default=64, help="token windows to evaluate")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per model pass")
    parser.add_argument("--device", help="cpu, cuda, … (default: cuda if available)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--json", type=Path, help="also write the metrics to this JSON file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_eval)
    return parser


def run_eval(args) -> int:
    from circuit_atlas.training.pipeline import run_eval_job

    report = run_eval_job(args.model, args.transcoders, args.corpus, text_field=args.text_field,
                          context_length=args.context_length, windows=args.windows,
                          batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                          progress=not args.quiet)
    print(report.table())
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_json(), indent=1), encoding="utf-8")
    return 0
