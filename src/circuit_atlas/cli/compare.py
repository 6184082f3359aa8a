"""`circuit-atlas compare A B`: what differs between two traced graphs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from circuit_atlas.cli.common import check_output_file

EXAMPLE = """\
examples:
  circuit-atlas compare graphs/dallas graphs/oakland
  circuit-atlas compare graphs/dallas graphs/oakland --top 5 --json dallas-vs-oakland.json
  circuit-atlas compare graphs/dallas graphs/dallas-steered --features features/

A and B are graph bundles written by `trace` (OUT/<slug>/) or folders written by Graph.save.
Positions are aligned by their tokens (same token, substituted token, the last position);
features by (layer, feature) at aligned positions; targets by token, then by rank (the first
target of each graph is its answer). Influence is each node's influence on its graph's targets.
--json writes the whole comparison (fields: docs/graph-comparison.md).
"""


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "compare", help="compare two graphs: features and edges that appear, disappear or change",
        description="Compare two attribution graphs node by node and edge by edge.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, metavar="A", help="first graph (bundle or Graph.save folder)")
    parser.add_argument("b", type=Path, metavar="B", help="second graph")
    parser.add_argument("--top", type=int, default=8, help="rows per table (default 8)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the full comparison as JSON")
    parser.add_argument("--features", type=Path, metavar="DIR",
                        help="feature dashboards whose labels name the features (default: the "
                             "labels the bundles were traced with)")
    parser.add_argument("--node-threshold", type=float, default=0.8,
                        help="node pruning of both graphs: which nodes are listed (default 0.8)")
    parser.add_argument("--edge-threshold", type=float, default=0.98,
                        help="edge pruning of both graphs (default 0.98)")
    parser.set_defaults(func=run)
    return parser


def load_graph_and_labels(path: Path):
    """(Graph, labels the bundle keeps) for a bundle or Graph.save folder."""
    from circuit_atlas.cli.export import find_graph
    from circuit_atlas.graph import Graph
    from circuit_atlas.graph.bundle import read_feature_labels

    native, _ = find_graph(path.expanduser())
    return Graph.load(native), read_feature_labels(native.parent) or read_feature_labels(native)


def run(args: argparse.Namespace) -> int:
    from circuit_atlas.cli.common import check_at_least
    from circuit_atlas.cli.trace import feature_labels
    from circuit_atlas.graph.compare import compare_graphs
    from circuit_atlas.graph.prune import check_threshold

    check_threshold(args.node_threshold, "--node-threshold")
    check_threshold(args.edge_threshold, "--edge-threshold")
    check_at_least(args.top, 1, "--top")
    if args.json is not None:
        check_output_file(args.json, "--json")
    graph_a, labels_a = load_graph_and_labels(args.a)
    graph_b, labels_b = load_graph_and_labels(args.b)
    labels = {**labels_a, **labels_b, **(feature_labels(args.features) or {})}
    result = compare_graphs(graph_a, graph_b, node_threshold=args.node_threshold,
                            edge_threshold=args.edge_threshold, labels=labels)
    print(format_comparison(result, args.top))
    if args.json is not None:
        args.json.expanduser().write_text(json.dumps(result.to_json(), indent=1, ensure_ascii=False),
                                          encoding="utf-8")
        print(f"\nwritten to {args.json}")
    return 0


def _where(result, node) -> str:
    position = next((p for p in result.positions if p.key == node.position), None)
    if position is None:
        return node.position
    tokens = {position.token_a, position.token_b} - {None}
    return "|".join(sorted(tokens)) + ("" if position.role == "same token" else f" ({position.role})")


def _node_row(result, node) -> str:
    name = (f"L{node.layer} #{node.feature}" if node.kind == "feature"
            else f"error L{node.layer}" if node.kind == "error" else node.kind)
    act = lambda v: "—" if v is None else f"{v:.2f}"  # noqa: E731
    return (f"  {name:<12} at {_where(result, node)!r:<22} influence {node.influence_a:.3f} -> "
            f"{node.influence_b:.3f}  activation {act(node.activation_a)} -> {act(node.activation_b)}"
            + (f"  {node.label}" if node.label else ""))


def format_comparison(result, top: int) -> str:
    """The comparison as text: both graphs, the target, and the tables of differences."""
    lines = []
    for name, side in (("A", result.a), ("B", result.b)):
        lines.append(f"{name}: {side.prompt!r}  replacement {side.replacement:.3f}, "
                     f"completeness {side.completeness:.3f}, {side.n_kept_features} of "
                     f"{side.n_feature_nodes} features kept")
    changed = [p for p in result.positions if p.role != "same token"]
    lines.append("positions: " + ", ".join(
        f"{p.token_a!r} -> {p.token_b!r} ({p.role})" for p in changed))
    t = result.target
    lines.append(f"target: A {t['token_a']!r} p={t['probability_a']:.3f}   "
                 f"B {t['token_b']!r} p={t['probability_b']:.3f}")
    s = result.summary
    lines.append(f"features kept in both {s['features both']}, only in A {s['features only a']}, "
                 f"only in B {s['features only b']}; share of influence on shared features: "
                 f"A {s['shared influence share a']:.2f}, B {s['shared influence share b']:.2f}")
    for title, nodes in (("disappeared (kept only in A)", result.disappeared()),
                         ("appeared (kept only in B)", result.appeared()),
                         ("changed most (kept in both)", result.changed(top))):
        lines.append(f"\n{title}:")
        lines += [_node_row(result, n) for n in nodes[:top]] or ["  (none)"]
    lines.append("\nedges that changed most in influence:")
    for edge in result.edges[:top]:
        lines.append(f"  {edge.source} -> {edge.target}: weight {edge.weight_a:.3g} -> "
                     f"{edge.weight_b:.3g}, influence {edge.influence_a:.3f} -> "
                     f"{edge.influence_b:.3f} ({edge.status})")
    return "\n".join(lines)
