"""`circuit-atlas export`: turn a saved graph into the frontend / Neuronpedia JSON file."""

from __future__ import annotations

import argparse
from pathlib import Path

from circuit_atlas.cli.common import check_output_file
from circuit_atlas.cli.trace import feature_labels
from circuit_atlas.errors import CircuitAtlasError

EXAMPLE = """\
examples:
  circuit-atlas export graphs/dallas --format neuronpedia
      writes graphs/dallas/dallas.json and adds it to graphs/dallas/graph-metadata.json
  circuit-atlas export graphs/dallas --format neuronpedia --out upload/dallas-v2.json \\
      --node-threshold 0.6 --edge-threshold 0.95
      writes upload/dallas-v2.json (slug "dallas-v2") and upload/graph-metadata.json

GRAPH_DIR is a folder written by Graph.save (graph.json + graph.safetensors), or a graph bundle
written by `circuit-atlas trace` (OUT/<slug>/, whose graph/ subfolder holds the graph; the JSON
then goes into the bundle, replacing the pruned view trace wrote). The slug must equal the file
name without .json, because the frontend loads <slug>.json; it defaults to the --out file name,
else to the bundle's slug, else to GRAPH_DIR's name.
"""


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export",
        help="export a saved graph as pruned graph JSON (Neuronpedia / circuit-tracer frontend)",
        description="Prune a saved attribution graph and write it in the graph-JSON format "
        "that Neuronpedia and the circuit-tracer frontend load.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("graph_dir", type=Path, metavar="GRAPH_DIR",
                        help="saved graph folder, or a bundle folder written by trace")
    parser.add_argument(
        "--format", choices=["neuronpedia"], default="neuronpedia",
        help="output format (default: neuronpedia, also read by the circuit-tracer frontend)",
    )
    parser.add_argument("--out", type=Path, metavar="FILE",
                        help="output .json file (default: GRAPH_DIR/<slug>.json)")
    parser.add_argument("--slug", help="graph identifier (default: see below)")
    parser.add_argument("--scan", help="override the transcoder-set id written as metadata.scan "
                        "(Neuronpedia reads it as the model id, e.g. gemma-2-2b)")
    parser.add_argument("--node-threshold", type=float, default=0.8,
                        help="cumulative influence kept by node pruning, in [0, 1] (default 0.8)")
    parser.add_argument("--edge-threshold", type=float, default=0.98,
                        help="cumulative influence kept by edge pruning, in [0, 1] (default 0.98)")
    parser.add_argument("--features", type=Path, metavar="DIR",
                        help="feature dashboards (features build) whose labels become node labels; "
                        "without it, the labels a bundle was traced with are kept")
    parser.add_argument("--no-index", action="store_true",
                        help="do not add the graph to graph-metadata.json next to the output")
    parser.add_argument("--indent", type=int, default=None,
                        help="indent the JSON by this many spaces (default: compact)")
    parser.set_defaults(func=run)
    return parser


def resolve_output(graph_dir: Path, out: Path | None, slug: str | None) -> tuple[Path, str]:
    """(output directory, slug) from the arguments; the slug is also the file stem."""
    if out is not None:
        if out.suffix != ".json":
            raise CircuitAtlasError(f"--out must name a .json file, got {out}")
        if slug is not None and slug != out.stem:
            raise CircuitAtlasError(
                f"--slug {slug!r} differs from the --out file name {out.name!r}; the frontend "
                "loads <slug>.json, so they must match"
            )
        return out.parent, out.stem
    return graph_dir, slug or graph_dir.resolve().name


def find_graph(folder: Path) -> tuple[Path, str | None]:
    """(folder holding graph.json, bundle slug or None) for a Graph.save folder or a trace bundle.

    `trace` writes bundles (OUT/<slug>/graph/...), so users naturally pass the bundle or even the
    data folder; both get a message that says where the graph is instead of "graph.json missing".
    """
    from circuit_atlas.graph.bundle import NATIVE_DIR, bundle_settings, read_bundle_info

    if not folder.is_dir() or (folder / "graph.json").is_file():
        return folder, None  # Graph.load names a missing or non-folder path itself
    if (folder / NATIVE_DIR / "graph.json").is_file():
        # a bundle may come from anywhere: an invalid slug in it is not used (folder name instead)
        return folder / NATIVE_DIR, bundle_settings(read_bundle_info(folder)).slug
    bundles = sorted(c.name for c in folder.iterdir() if (c / NATIVE_DIR / "graph.json").is_file())
    if bundles:
        shown = ", ".join(bundles[:5]) + (", ..." if len(bundles) > 5 else "")
        raise CircuitAtlasError(
            f"{folder} is a data folder holding graph bundles ({shown}), not one graph; export "
            f"one of them, e.g. `circuit-atlas export {folder / bundles[0]}`"
        )
    raise CircuitAtlasError(
        f"{folder}: graph.json is missing (also {folder / NATIVE_DIR / 'graph.json'}); GRAPH_DIR "
        "must be a folder written by Graph.save (graph.json + graph.safetensors) or a graph "
        "bundle written by `circuit-atlas trace` (OUT/<slug>/, graph in its graph/ subfolder)"
    )


def stored_attention(native_dir: Path):
    """The attention explanations stored beside a graph (bundle folder or the graph's own), if
    any: re-exports keep the graph JSON's optional "attention" object."""
    from circuit_atlas.graph import GraphAttention
    from circuit_atlas.graph.bundle import NATIVE_DIR

    folder = native_dir.parent if native_dir.name == NATIVE_DIR else native_dir
    return GraphAttention.load(folder) if GraphAttention.exists(folder) else None


def run(args) -> int:
    from circuit_atlas.graph import Graph, write_graph_json
    from circuit_atlas.io.checks import check_slug, check_threshold
    from circuit_atlas.graph.bundle import NATIVE_DIR, read_feature_labels

    check_threshold(args.node_threshold, "--node-threshold")
    check_threshold(args.edge_threshold, "--edge-threshold")
    if args.out is not None:
        check_output_file(args.out, "--out")
    graph_dir = args.graph_dir.expanduser()
    native_dir, bundle_slug = find_graph(graph_dir)
    out_dir, slug = resolve_output(graph_dir, args.out, args.slug or (None if args.out else bundle_slug))
    check_slug(slug)
    graph = Graph.load(native_dir)
    # A bundle keeps its labels beside graph/ (also when GRAPH_DIR names that subfolder).
    labels = read_feature_labels(native_dir.parent) if native_dir.name == NATIVE_DIR else {}
    labels.update(feature_labels(args.features) or {})
    path = write_graph_json(
        graph, out_dir, slug, args.node_threshold, args.edge_threshold, labels=labels or None,
        scan=args.scan, update_metadata=not args.no_index, indent=args.indent,
        attention=stored_attention(native_dir),
    )
    print(f"wrote {path}")
    return 0
