"""`circuit-atlas supernodes GRAPH --features DIR`: suggested groups of a graph's features."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from circuit_atlas.cli.common import check_output_file
from circuit_atlas.errors import CircuitAtlasError

EXAMPLE = """\
examples:
  circuit-atlas supernodes graphs/dallas --features features/
  circuit-atlas supernodes graphs/dallas --features features/ --transcoders demo --json groups.json
  circuit-atlas supernodes graphs/dallas --node-threshold 0.95 --min-similarity 0.5

Features are grouped by decoder similarity (of the --transcoders' decoders, else of the logit
effects the store keeps), co-activation in the feature store (from its samples) and shared
inputs / outputs in the graph; each group is named from its members' labels. --json writes the
groups (fields: docs/graph-comparison.md); its "groups[].members" are graph-JSON node ids.
"""


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "supernodes", help="suggest supernodes: groups of a graph's features that belong together",
        description="Suggest groups of a graph's feature nodes (supernodes).",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("graph", type=Path, metavar="GRAPH", help="graph bundle or Graph.save folder")
    parser.add_argument("--features", type=Path, metavar="DIR",
                        help="feature store (co-activation, logit effects, labels)")
    parser.add_argument("--transcoders", help="the graph's transcoders, for decoder similarity "
                                              "(hub id, folder or 'demo')")
    parser.add_argument("--node-threshold", type=float, default=0.8,
                        help="pruning that chooses the candidate features (default 0.8)")
    parser.add_argument("--min-similarity", type=float, default=0.6,
                        help="mean pairwise similarity a group needs (default 0.6)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the suggestions as JSON")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from circuit_atlas.cli.compare import load_graph_and_labels
    from circuit_atlas.features.store import FeatureStore
    from circuit_atlas.features.supernodes import suggest_supernodes
    from circuit_atlas.graph.prune import check_threshold

    check_threshold(args.node_threshold, "--node-threshold")
    if not -1.0 <= args.min_similarity <= 1.0:
        raise CircuitAtlasError(f"--min-similarity must lie in [-1, 1], got {args.min_similarity}")
    if args.json is not None:
        check_output_file(args.json, "--json")
    graph, labels = load_graph_and_labels(args.graph)
    store = FeatureStore(args.features) if args.features is not None else None
    transcoders = None
    if args.transcoders:
        from circuit_atlas.transcoders import load_transcoders

        transcoders = load_transcoders(args.transcoders, device="cpu")
        if transcoders.n_layers != graph.n_layers:
            raise CircuitAtlasError(f"--transcoders has {transcoders.n_layers} layers, the graph "
                                    f"{graph.n_layers}; give the set the graph was traced with")
    try:
        result = suggest_supernodes(graph, features=store, transcoders=transcoders,
                                    node_threshold=args.node_threshold,
                                    min_similarity=args.min_similarity, labels=labels)
    finally:
        if store is not None:
            store.close()
    print(f"{len(result.candidates)} candidate features; evidence: {', '.join(result.evidence_used)}")
    for group in result.groups:
        print(f"\n{group.name}  (cohesion {group.cohesion:.2f}, influence {group.influence:.3f}; "
              + ", ".join(f"{k} {v:.2f}" for k, v in group.evidence.items()) + ")")
        for member, label in zip(group.members, group.labels):
            print(f"  {member:<14} {label}")
    if not result.groups:
        print("no group reaches --min-similarity")
    if args.json is not None:
        args.json.expanduser().write_text(json.dumps(result.to_json(), indent=1, ensure_ascii=False),
                                          encoding="utf-8")
        print(f"\nwritten to {args.json}")
    return 0

