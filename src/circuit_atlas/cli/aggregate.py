"""`circuit-atlas aggregate PATH...`: recurring features and edges over many graphs, and their
typical circuit as a bundle the explorer opens."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from circuit_atlas.cli.common import check_output_dir, check_output_file
from circuit_atlas.errors import CircuitAtlasError

EXAMPLE = """\
examples:
  circuit-atlas trace --model demo --transcoders demo --prompts cities.jsonl --out graphs
  circuit-atlas aggregate graphs                       every bundle in graphs/
  circuit-atlas aggregate graphs --out graphs --slug typical-city   + the typical circuit
  circuit-atlas aggregate graphs/dallas graphs/plano graphs/austin --json table.json --all-positions
  circuit-atlas serve graphs                           the typical circuit is one of the graphs

Positions are aligned from the end (-1 is the answer position, where each graph predicts its
first target), so prompts made from one template line up. A feature's frequency is the share of
graphs whose pruned graph keeps it; its mean influence (on the graph's targets) counts 0 where
it is absent. The typical circuit keeps the features of frequency >= --min-frequency with the
mean of the graphs' edges between them; its one target is "the answer".
"""


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "aggregate", help="recurring features and edges over many graphs, and a typical circuit",
        description="Aggregate graph bundles: the features that recur (at the answer position, "
                    "or at every aligned position), the edges between them, and the typical "
                    "circuit as a graph bundle.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", type=Path, nargs="+", metavar="PATH",
                        help="graph bundles, Graph.save folders, or data folders of bundles")
    parser.add_argument("--min-frequency", type=float, default=0.5,
                        help="share of graphs that must keep a feature (edge) for it to join the "
                             "typical circuit (edge table) (default 0.5)")
    parser.add_argument("--top", type=int, default=15, help="rows per table (default 15)")
    parser.add_argument("--all-positions", action="store_true",
                        help="list recurring features at every aligned position, not only the answer's")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="write the typical circuit as a graph bundle into this data folder")
    parser.add_argument("--slug", default="typical-circuit", help="its name (default typical-circuit)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the tables as JSON")
    parser.add_argument("--features", type=Path, metavar="DIR",
                        help="feature dashboards whose labels name the features (default: the "
                             "labels the bundles were traced with)")
    parser.add_argument("--node-threshold", type=float, default=0.8, help="node pruning of each graph (default 0.8)")
    parser.add_argument("--edge-threshold", type=float, default=0.98, help="edge pruning of each graph (default 0.98)")
    parser.set_defaults(func=run)
    return parser


def collect_graphs(paths: list[Path]):
    """(names, graphs, labels) of every graph the paths name; typical circuits written by an
    earlier `aggregate` are left out (so rerunning into the same folder does not count them)."""
    from circuit_atlas.cli.compare import load_graph_and_labels
    from circuit_atlas.graph.bundle import NATIVE_DIR

    names, graphs, labels = [], [], {}
    for path in paths:
        path = path.expanduser()
        if path.is_dir() and not (path / "graph.json").is_file() and not (path / NATIVE_DIR).is_dir():
            folders = sorted(c for c in path.iterdir() if (c / NATIVE_DIR / "graph.json").is_file())
            if not folders:
                raise CircuitAtlasError(f"{path} holds no graph bundles (OUT/<slug>/graph/)")
        else:
            folders = [path]
        for folder in folders:
            graph, found = load_graph_and_labels(folder)
            if "aggregate" in graph.settings:
                continue
            names.append(folder.name)
            graphs.append(graph)
            labels.update(found)
    if not graphs:
        raise CircuitAtlasError("no graphs to aggregate (typical circuits are not counted)")
    return names, graphs, labels


def run(args: argparse.Namespace) -> int:
    from circuit_atlas.cli.common import check_at_least
    from circuit_atlas.cli.trace import feature_labels
    from circuit_atlas.graph.aggregate import aggregate_graphs
    from circuit_atlas.graph.prune import check_threshold

    check_threshold(args.node_threshold, "--node-threshold")
    check_threshold(args.edge_threshold, "--edge-threshold")
    check_at_least(args.top, 1, "--top")
    if not 0.0 < args.min_frequency <= 1.0:
        raise CircuitAtlasError(f"--min-frequency must lie in (0, 1], got {args.min_frequency}")
    if args.json is not None:
        check_output_file(args.json, "--json")
    if args.out is not None:
        from circuit_atlas.cli.trace import check_destination

        check_destination(args.out, args.slug)
    names, graphs, labels = collect_graphs(args.paths)
    labels.update(feature_labels(args.features) or {})
    result = aggregate_graphs(graphs, names=names, node_threshold=args.node_threshold,
                              edge_threshold=args.edge_threshold, min_frequency=args.min_frequency,
                              labels=labels)
    print(format_aggregate(result, args.top, args.all_positions))
    if args.json is not None:
        args.json.expanduser().write_text(json.dumps(result.to_json(), indent=1, ensure_ascii=False),
                                          encoding="utf-8")
        print(f"\ntables written to {args.json}")
    if args.out is not None:
        from circuit_atlas.graph.bundle import write_graph_bundle

        check_output_dir(args.out, "--out")
        folder = write_graph_bundle(result.graph, args.out, args.slug, args.node_threshold,
                                    args.edge_threshold, labels=labels)
        print(f"typical circuit ({result.graph.n_selected} features) written to {folder}; "
              f"open it with `circuit-atlas serve {args.out}`")
    return 0


def format_aggregate(result, top: int, all_positions: bool) -> str:
    answers = ", ".join(f"{t!r} ×{c}" for t, c in list(result.answers.items())[:8])
    lines = [f"{result.n_graphs} graphs; aligned positions: {''.join(result.tokens)!r}",
             f"answers: {answers}"]
    rows = result.features if all_positions else result.at_answer()
    where = "every aligned position" if all_positions else "the answer position"
    lines.append(f"\nrecurring features at {where} (by mean influence on the targets):")
    lines.append(f"  {'feature':<16} {'token':<14} {'kept':>6} {'fires':>6} {'mean infl':>9} "
                 f"{'when kept':>9} {'mean act':>8}  label")
    for f in rows[:top]:
        lines.append(f"  {f.key:<16} {f.token[:14]!s:<14} {f.frequency:>6.0%} {f.active_frequency:>6.0%} "
                     f"{f.mean_influence:>9.3f} {f.mean_influence_when_kept:>9.3f} "
                     f"{f.mean_activation:>8.2f}  {f.label}")
    lines.append(f"\nrecurring edges (kept in >= {result.settings['min_frequency']:.0%} of the graphs):")
    for e in result.edges[:top]:
        lines.append(f"  {e.source:<18} -> {e.target:<18} kept {e.frequency:>4.0%}  mean weight "
                     f"{e.mean_weight:.3g} (when kept {e.mean_weight_when_kept:.3g})")
    if not result.edges:
        lines.append("  (none)")
    return "\n".join(lines)
