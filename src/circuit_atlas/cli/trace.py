"""`circuit-atlas trace`: attribute one prompt and write the graph bundle the explorer serves."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from circuit_atlas.cli.common import (
    add_model_arguments,
    add_prompt_arguments,
    check_at_least,
    check_output_dir,
    prompt_from_args,
    model_placement,
)
from circuit_atlas.cli.prompt_file import default_slug
from circuit_atlas.errors import CircuitAtlasError

EXAMPLE = """\
examples:
  circuit-atlas trace --model demo --transcoders demo \\
      --prompt "the capital of the region containing dallas is" --out graphs/dallas --serve
  circuit-atlas trace --model google/gemma-2-2b --transcoders gemma \\
      --prompt "Fact: the capital of the state containing Dallas is" --out graphs/dallas \\
      --logit-diff " Austin" " Dallas" --max-feature-nodes 4096 --dtype bfloat16 --device cuda

many prompts, one graph each (a rerun skips the lines already traced):
  circuit-atlas trace --model demo --transcoders demo --prompts cities.jsonl --out graphs
  torchrun --nproc-per-node 8 -m circuit_atlas.cli.main trace --model M --transcoders T \\
      --prompts prompts.jsonl --out graphs --device cuda        # lines dealt out to 8 GPUs

prompts file (JSON Lines): a JSON string per line, or an object with "prompt" or "token_ids",
and optionally "slug", "targets" (list of tokens) or "logit_diff" ([POS, NEG]):
  "the capital of the region containing dallas is"
  {"prompt": "the capital of the region containing oakland is", "slug": "oakland"}
  {"prompt": "the capital of the region containing dallas is", "logit_diff": [" austin", " sacramento"], "slug": "dallas-diff"}
"""


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "trace",
        help="attribute a prompt and write its graph (native + pruned JSON for the explorer)",
        description="Trace the attribution graph of a prompt through a model's transcoders.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    add_prompt_arguments(parser, batch=True)
    parser.add_argument("--out", required=True, type=Path, help="data folder; the graph goes to OUT/<slug>/ (serve OUT shows every graph in it)")
    parser.add_argument("--slug", help="graph name (default: derived from the prompt)")
    parser.add_argument("--targets", nargs="+", metavar="TOKEN", help="explain these tokens (strings or ids) instead of the most likely ones")
    parser.add_argument("--logit-diff", nargs=2, metavar=("POS", "NEG"), help="explain the logit difference POS − NEG")
    parser.add_argument("--max-n-logits", type=int, default=10, help="most likely tokens to explain (default 10)")
    parser.add_argument("--desired-logit-prob", type=float, default=0.95, help="stop adding logits at this cumulative probability")
    parser.add_argument("--max-feature-nodes", type=int, default=7500, help="features that get rows (default 7500)")
    parser.add_argument("--batch-size", type=int, default=64, help="targets per backward pass (default 64)")
    parser.add_argument("--node-threshold", type=float, default=0.8, help="cumulative influence kept by node pruning")
    parser.add_argument("--edge-threshold", type=float, default=0.98, help="cumulative influence kept by edge pruning")
    parser.add_argument("--features", type=Path, metavar="DIR", help="feature dashboards (features build): labels go into the graph, details into the explorer")
    parser.add_argument("--force", action="store_true", help="with --prompts: trace every line again, also those already traced")
    parser.add_argument("--serve", action="store_true", help="start the explorer on the output folder afterwards")
    parser.add_argument("--port", type=int, default=8041, help="explorer port with --serve (default 8041)")
    parser.add_argument("--no-browser", action="store_true", help="with --serve: do not open a browser")
    parser.set_defaults(func=run)
    return parser


def parse_targets(args) -> list | None:
    from circuit_atlas.attribution import LogitDifference

    if args.targets and args.logit_diff:
        raise CircuitAtlasError("give either --targets or --logit-diff, not both")
    if args.logit_diff:
        return [LogitDifference(*[_token_or_id(t) for t in args.logit_diff])]
    if args.targets:
        return [_token_or_id(t) for t in args.targets]
    return None


def _token_or_id(text: str):
    return int(text) if re.fullmatch(r"\d+", text) else text


def feature_labels(folder: Path | None) -> dict | None:
    """`{(layer, feature): label}` from a dashboards folder, or None without one."""
    if folder is None:
        return None
    from circuit_atlas.features import open_feature_store

    store = open_feature_store(folder)
    if store is None:
        raise CircuitAtlasError(f"--features: {folder} holds no feature store (make one with `circuit-atlas features build`)")
    return store.labels()


def check_numbers(args) -> None:
    """Settings attribution would only reject after the model is loaded."""
    from circuit_atlas.io.checks import check_threshold

    check_threshold(args.node_threshold, "--node-threshold")
    check_threshold(args.edge_threshold, "--edge-threshold")
    check_at_least(args.max_n_logits, 1, "--max-n-logits")
    check_at_least(args.max_feature_nodes, 0, "--max-feature-nodes")
    check_at_least(args.batch_size, 1, "--batch-size")
    if not 0.0 < args.desired_logit_prob <= 1.0:
        raise CircuitAtlasError(f"--desired-logit-prob must lie in (0, 1], got {args.desired_logit_prob}")
    if args.serve and not 0 <= args.port <= 65535:
        raise CircuitAtlasError(f"--port must lie in 0..65535, got {args.port}")


def check_destination(out: Path, slug: str | None) -> None:
    """Fail before attribution when the bundle could not be written: --out is a file, the slug
    is not a safe file name, or OUT/<slug> holds something that is not a graph bundle."""
    from circuit_atlas.graph.bundle import BUNDLE_FILE, read_bundle_info
    from circuit_atlas.io.checks import check_slug

    check_output_dir(out, "--out")
    if slug is None:
        return
    try:
        check_slug(slug)
    except CircuitAtlasError as exc:
        raise CircuitAtlasError(f"--slug: {exc}") from None
    folder = Path(out).expanduser() / slug
    if folder.exists() and not folder.is_dir():
        raise CircuitAtlasError(f"cannot write the graph to {folder}: it is a file; choose another --slug")
    if folder.is_dir() and any(folder.iterdir()) and read_bundle_info(folder) is None:
        raise CircuitAtlasError(
            f"cannot write the graph to {folder}: the folder holds files that are not a "
            f"circuit-atlas graph bundle (no {BUNDLE_FILE}); choose another --out or --slug"
        )


def run(args) -> int:
    from circuit_atlas.attribution import attribute
    from circuit_atlas.replacement import load
    from circuit_atlas.graph import graph_scores
    from circuit_atlas.graph.bundle import write_graph_bundle

    if args.prompts is not None:
        from circuit_atlas.cli.batch_trace import run_batch

        return run_batch(args, check_numbers=check_numbers, check_destination=check_destination,
                         feature_labels=feature_labels)
    check_numbers(args)
    prompt = prompt_from_args(args)
    targets = parse_targets(args)
    # With --token-ids the default slug needs the decoded prompt; it is valid by construction.
    check_destination(args.out, args.slug or (None if isinstance(prompt, list) else default_slug(prompt)))
    labels = feature_labels(args.features)
    model = load(args.model, args.transcoders, dtype=args.dtype, lazy_encoder=args.lazy_encoder,
                 **model_placement(args))
    graph = attribute(
        model,
        prompt,
        targets=targets,
        max_n_logits=args.max_n_logits,
        desired_logit_prob=args.desired_logit_prob,
        max_feature_nodes=args.max_feature_nodes,
        batch_size=args.batch_size,
    )
    slug = args.slug or default_slug(graph.prompt if isinstance(prompt, list) else prompt)
    scores = graph_scores(graph)
    folder = write_graph_bundle(graph, args.out, slug, args.node_threshold, args.edge_threshold,
                                labels=labels, scores=scores)
    print(summarise(graph, scores, folder, slug))
    if args.serve:
        from circuit_atlas.cli.serve import serve_folder

        serve_folder(
            args.out, host="127.0.0.1", port=args.port, open_browser=not args.no_browser,
            features_dir=args.features, model=model, graph=slug,
        )
    return 0


def summarise(graph, scores, folder: Path, slug: str) -> str:
    """The summary printed after tracing: sizes, scores, top logits, where the files are."""
    import json

    view = json.loads((Path(folder) / f"{slug}.json").read_text(encoding="utf-8"))
    kinds: dict[str, int] = {}
    for node in view["nodes"]:
        kinds[node["feature_type"]] = kinds.get(node["feature_type"], 0) + 1
    n_errors = graph.n_layers * len(graph.tokens)
    return "\n".join(
        [
            f"prompt: {graph.prompt!r} ({len(graph.tokens)} tokens)",
            f"active features: {graph.active_features.shape[0]}  with rows: {graph.selected_features.shape[0]}"
            f"  error nodes: {n_errors}  logit targets: {len(graph.logit_tokens)}",
            f"pruned view: {len(view['nodes'])} nodes ({kinds.get('cross layer transcoder', 0)} features, "
            f"{kinds.get('mlp reconstruction error', 0)} errors), {len(view['links'])} links",
            f"replacement score: {scores.replacement:.3f}   completeness score: {scores.completeness:.3f}",
            "top logits: "
            + ", ".join(f"{tok!r} p={p:.3f}" for tok, p in zip(graph.logit_tokens[:5], graph.logit_probabilities.tolist())),
            f"written to: {folder}",
        ]
    )
