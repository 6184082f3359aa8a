"""`circuit-atlas features`: build feature dashboards from a corpus, show one, label features."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from circuit_atlas.cli.common import (
    add_device_map_arguments,
    add_lazy_encoder_argument,
    check_at_least,
    check_output_dir,
    model_placement,
    rank_placement,
)

EXAMPLES = """\
examples:
  circuit-atlas features build --model demo --transcoders demo --corpus texts/ --out features/
  circuit-atlas features build --model google/gemma-2-2b --transcoders gemma \\
      --corpus data.jsonl --out gemma-features --max-tokens 5000000 --device cuda --dtype bfloat16
  circuit-atlas features show features/ 3 1017
  circuit-atlas features label features/ 3 1017 "Texas / Dallas"
  circuit-atlas serve graphs/ --features features/

An interrupted build (Ctrl-C, a crash, a killed job) continues where it stopped when the same
command is run again; the finished store equals one built without interruption.

Several GPUs or machines: run the same command under torchrun; the ranks share the corpus and the
result equals a one-process build:
  torchrun --nproc-per-node 4 -m circuit_atlas.cli.main features build --model M \
      --transcoders T --corpus data.jsonl --out features/ --max-tokens 50000000
"""


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "features",
        help="build feature dashboards from a text corpus, show and label features",
        description="Feature dashboards: top contexts, quantile examples, density, histogram "
                    "and promoted / suppressed tokens of every transcoder feature.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="features_command", metavar="ACTION")
    _register_build(commands)
    _register_show(commands)
    _register_label(commands)
    parser.set_defaults(func=lambda args: _missing_action(parser))
    return parser


def _missing_action(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


BUILD_EXAMPLES = """\
examples:
  circuit-atlas features build --model demo --transcoders demo --corpus texts/ --out features/
  circuit-atlas features build --model google/gemma-2-2b --transcoders gemma \\
      --corpus data.jsonl --out gemma-features --max-tokens 5000000 --device cuda --dtype bfloat16

Running the same command again after an interruption continues the build where it stopped.

Across ranks (GPUs, machines): the same command under torchrun. Rank r builds a shard from blocks
r, r+N, ... of --block-documents documents; rank 0 merges the shards into --out, and the store
equals the one a single process builds (same --batch-size, --block-documents and kind of device).
--out must be on a file system all ranks share. A killed rank: rerun the same torchrun command
(same number of processes) and every rank continues from its last commit.
  torchrun --nproc-per-node 8 -m circuit_atlas.cli.main features build --model M \
      --transcoders T --corpus data.jsonl --out features/ --device cuda
  torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \
      -m circuit_atlas.cli.main features build ...
"""

SHOW_EXAMPLES = """\
examples:
  circuit-atlas features show features/ 3 1017          top contexts, quantiles, logits
  circuit-atlas features show features/ 3 1017 --json   the object the explorer's panel reads
"""

LABEL_EXAMPLES = """\
examples:
  circuit-atlas features label features/ 3 1017 "Texas / Dallas"
  circuit-atlas features label features/ 3 1017 ""      remove the label
"""


def _register_build(commands) -> None:
    # Every help text states its own default: ArgumentDefaultsHelpFormatter would append a second,
    # "(default: None)", to the options whose default is computed.
    p = commands.add_parser(
        "build", help="stream a corpus through model + transcoders into a feature store",
        description="Build (or resume) a feature store in --out.",
        epilog=BUILD_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="hub id, local directory, or 'demo'")
    p.add_argument("--transcoders", required=True, help="hub id (repo[/sub][@rev]), local directory, or 'demo'")
    add_lazy_encoder_argument(p)
    p.add_argument("--corpus", required=True,
                   help="folder of .txt files, a .txt file (blank-line separated documents), a "
                        ".jsonl file, or hf:DATASET[:CONFIG] (needs the `datasets` package)")
    p.add_argument("--out", required=True, type=Path, help="store folder (features.sqlite, labels.json)")
    p.add_argument("--text-field", default="text",
                   help="JSONL / dataset field holding the text (default: text)")
    p.add_argument("--split", default="train", help="dataset split for hf: corpora (default: train)")
    p.add_argument("--encoding-errors", choices=["strict", "replace"], default="strict",
                   help="non-UTF-8 bytes: stop with an error naming the file, or replace them "
                        "with U+FFFD (default: strict)")
    p.add_argument("--max-tokens", type=int, default=None, help="token budget (default: the whole corpus)")
    p.add_argument("--context-len", type=int, default=None,
                   help="tokens per window incl. BOS (default: min(128, the model's maximum))")
    p.add_argument("--batch-size", type=int, default=16, help="windows per forward pass (default: 16)")
    p.add_argument("--top-k", type=int, default=20,
                   help="top activating contexts kept per feature (default: 20)")
    p.add_argument("--samples", type=int, default=40,
                   help="uniformly sampled active occurrences per feature (feed the quantile "
                        "groups; default: 40)")
    p.add_argument("--context-before", type=int, default=15,
                   help="tokens kept before each focal token (default: 15)")
    p.add_argument("--context-after", type=int, default=5,
                   help="tokens kept after each focal token (default: 5)")
    p.add_argument("--n-logits", type=int, default=10,
                   help="promoted / suppressed tokens kept per feature (default: 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling keys (default: 0)")
    p.add_argument("--block-documents", type=int, default=None,
                   help="documents per block: batches never span blocks, and ranks under torchrun "
                        "share out blocks (default: 64)")
    p.add_argument("--commit-interval", type=float, default=60.0,
                   help="minimum seconds between commits (work since the last commit is redone "
                        "after a crash; 0 commits after every batch; default: 60)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps ... (default: cuda if available)")
    add_device_map_arguments(p)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="model dtype (default: float32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_build)


def _register_show(commands) -> None:
    p = commands.add_parser("show", help="print the dashboard of one feature",
                            description="Print the dashboard of one feature of a feature store.",
                            epilog=SHOW_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", type=Path, help="store folder (the --out of features build)")
    p.add_argument("layer", type=int, help="layer of the feature (0-based)")
    p.add_argument("feature", type=int, help="feature index within the layer")
    p.add_argument("--json", action="store_true", help="print the frontend JSON object instead")
    p.set_defaults(func=run_show)


def _register_label(commands) -> None:
    p = commands.add_parser("label", help="label a feature (an empty text removes the label)",
                            description="Set the label of one feature; graphs traced with "
                                        "--features and the explorer show it.",
                            epilog=LABEL_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", type=Path, help="store folder (the --out of features build)")
    p.add_argument("layer", type=int, help="layer of the feature (0-based)")
    p.add_argument("feature", type=int, help="feature index within the layer")
    p.add_argument("text", help="the label")
    p.set_defaults(func=run_label)


def run_build(args: argparse.Namespace) -> int:
    from circuit_atlas.replacement import load
    from circuit_atlas.features.build import BuildSettings, build_feature_store
    from circuit_atlas.features.sources import open_feature_corpus
    from circuit_atlas.io import distributed

    check_build_numbers(args)
    check_output_dir(args.out, "--out")
    model_placement(args)  # a bad --device or --device-map fails before the corpus is opened
    corpus = open_feature_corpus(args.corpus, text_field=args.text_field,
                                 encoding_errors=args.encoding_errors, split=args.split)
    settings = BuildSettings(
        context_len=args.context_len, top_k=args.top_k, n_samples=args.samples,
        context_before=args.context_before, context_after=args.context_after,
        n_logits=args.n_logits, max_tokens=args.max_tokens, seed=args.seed,
        **({} if args.block_documents is None else {"block_documents": args.block_documents}),
    )
    distributed.init_from_environment()
    model = load(args.model, args.transcoders, dtype=args.dtype, lazy_encoder=args.lazy_encoder,
                 **rank_placement(args, distributed.world_size()))
    report = build_feature_store(model, corpus, args.out, settings, batch_size=args.batch_size,
                                 commit_interval=args.commit_interval, progress=not args.no_progress)
    rank, world_size = distributed.rank(), distributed.world_size()
    if report.stop_reason != "interrupted":
        distributed.shutdown()
    if rank == 0:
        print(_summary(report, world_size))
    return 0 if report.stop_reason != "interrupted" else 130


def _summary(report, world_size: int) -> str:
    state = {"corpus": "complete: read the whole corpus",
             "max-tokens": "complete: reached --max-tokens",
             "interrupted": "interrupted: run the same command again to continue"}[report.stop_reason]
    lines = [f"feature store: {report.out}",
             f"{state}; {report.tokens:,} tokens from {report.documents:,} documents "
             f"({report.windows:,} windows)"]
    if report.new_tokens:
        ranks = f" on {world_size} ranks" if world_size > 1 else ""
        lines.append(f"this run: {report.new_tokens:,} tokens in {report.seconds:.1f} s "
                     f"({report.tokens_per_second:,.0f} tokens/s{ranks})")
    lines.append(f"browse: circuit-atlas serve GRAPHS_DIR --features {report.out}")
    return "\n".join(lines)


def check_build_numbers(args: argparse.Namespace) -> None:
    """Counts that must be positive, checked before the model loads."""
    for flag, value, minimum in (("--batch-size", args.batch_size, 1), ("--top-k", args.top_k, 1),
                                 ("--samples", args.samples, 1), ("--context-before", args.context_before, 0),
                                 ("--context-after", args.context_after, 0), ("--n-logits", args.n_logits, 1),
                                 ("--commit-interval", args.commit_interval, 0), ("--seed", args.seed, 0)):
        check_at_least(value, minimum, flag)
    if args.block_documents is not None:
        check_at_least(args.block_documents, 1, "--block-documents")
    if args.max_tokens is not None:
        check_at_least(args.max_tokens, 1, "--max-tokens")
    if args.context_len is not None:
        check_at_least(args.context_len, 2, "--context-len")


def run_show(args: argparse.Namespace) -> int:
    from circuit_atlas.features.store import FeatureStore

    with FeatureStore(args.store) as store:
        if args.json:
            print(json.dumps(store.to_frontend_json(args.layer, args.feature), indent=1, ensure_ascii=False))
            return 0
        print(format_card(store.card(args.layer, args.feature)))
    return 0


def run_label(args: argparse.Namespace) -> int:
    from circuit_atlas.features.store import FeatureStore

    with FeatureStore(args.store) as store:
        store.set_label(args.layer, args.feature, args.text or None)
    print(f"layer {args.layer} feature {args.feature}: " + (repr(args.text) if args.text else "label removed"))
    return 0


def format_card(card) -> str:
    """A plain-text dashboard for the terminal."""
    lines = [f"layer {card.layer} feature {card.feature}" + (f" — {card.label}" if card.label else "")]
    lines.append(f"active on {card.n_active:,} of {card.n_tokens:,} tokens ({100 * card.density:.4f}%), "
                 f"mean {card.mean_activation:.4g}, max {card.max_activation:.4g}"
                 + ("" if card.complete else "  [store still building]"))
    lines.append("promotes:   " + " ".join(repr(t.token) for t in card.top_logits))
    lines.append("suppresses: " + " ".join(repr(t.token) for t in card.bottom_logits))
    sections = [("Top activations", card.top_examples)] + [(g.name, g.examples) for g in card.quantile_examples]
    for title, examples in sections:
        lines.append(f"\n{title}")
        for ex in examples:
            text = "".join(f"[[{tok}]]" if i == ex.focus else tok for i, tok in enumerate(ex.tokens))
            lines.append(f"  {ex.activation:8.4f}  {text!r}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    from circuit_atlas.cli.main import main

    sys.exit(main(["features", *sys.argv[1:]]))
