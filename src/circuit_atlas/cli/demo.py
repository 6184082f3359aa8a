"""`circuit-atlas demo`: trace a two-hop prompt through the bundled model and open the explorer.

Everything it needs ships inside the package (model, transcoders, feature dashboards with
automatic labels), so it works offline right after install and takes seconds on a laptop CPU.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from circuit_atlas.errors import CircuitAtlasError

DEFAULT_OUT = Path("circuit-atlas-demo")
FEATURES_DIR = "features"
EXAMPLE = """\
examples:
  circuit-atlas demo
  circuit-atlas demo --prompt "the capital of the region containing seattle is" --out my-demo
  circuit-atlas demo --no-browser            (trace and write only; print how to browse)

The bundled model and transcoders also work with every other command:
  circuit-atlas trace --model demo --transcoders demo --prompt "..." --out graphs --serve
"""


def register(subparsers) -> argparse.ArgumentParser:
    from circuit_atlas.demo.bundle import DEFAULT_PROMPT, TRANSCODER_REFS

    parser = subparsers.add_parser(
        "demo", help="trace a two-hop question through the bundled demo model and explore it",
        description="Trace the attribution graph of a two-hop question through the bundled toy-"
                    "world model and its transcoders, print the summary, write the graph and "
                    "open the explorer (feature dashboards and steering included).",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT,
                        help=f"prompt in the toy world's vocabulary (default {DEFAULT_PROMPT!r})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"folder for the graph and a copy of the dashboards (default ./{DEFAULT_OUT})")
    parser.add_argument("--transcoders", default="demo", choices=sorted(TRANSCODER_REFS),
                        help="bundled set: demo = demo-clt (cross-layer), demo-plt (per-layer)")
    parser.add_argument("--node-threshold", type=float, default=0.8,
                        help="cumulative influence kept by node pruning")
    parser.add_argument("--edge-threshold", type=float, default=0.98,
                        help="cumulative influence kept by edge pruning")
    parser.add_argument("--port", type=int, default=8041, help="explorer port (default 8041)")
    parser.add_argument("--no-browser", action="store_true",
                        help="do not open a browser; without --serve, also do not start the explorer")
    parser.add_argument("--serve", action="store_true",
                        help="with --no-browser: start the explorer anyway (e.g. on a remote machine)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, mps ...")
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:
    import time

    from circuit_atlas.attribution import attribute
    from circuit_atlas.cli.trace import default_slug, summarise
    from circuit_atlas.demo.bundle import TRANSCODER_REFS, demo_features_path
    from circuit_atlas.graph import graph_scores
    from circuit_atlas.io.checks import check_threshold
    from circuit_atlas.graph.bundle import write_graph_bundle
    from circuit_atlas.replacement import load

    check_threshold(args.node_threshold, "--node-threshold")
    check_threshold(args.edge_threshold, "--edge-threshold")
    started = time.perf_counter()
    features_src = demo_features_path(TRANSCODER_REFS[args.transcoders])
    model = load("demo", args.transcoders, device=args.device)
    check_vocabulary(model, args.prompt)
    graph = attribute(model, args.prompt, progress=False)
    features_dir = copy_features(features_src, args.out / FEATURES_DIR)
    labels = read_labels(features_dir)
    slug = default_slug(args.prompt)
    scores = graph_scores(graph)
    folder = write_graph_bundle(graph, args.out, slug, args.node_threshold, args.edge_threshold,
                                labels=labels, scores=scores)
    print(summarise(graph, scores, folder, slug))
    print(top_features_text(graph, labels))
    print(f"traced in {time.perf_counter() - started:.1f} s")
    serve = not args.no_browser or args.serve
    if not serve:
        print(f"browse: circuit-atlas serve {args.out} --features {features_dir} "
              f"--model demo --transcoders {args.transcoders}")
        return 0
    from circuit_atlas.cli.serve import serve_folder

    serve_folder(args.out, host="127.0.0.1", port=args.port, open_browser=not args.no_browser,
                 features_dir=features_dir, model=model, graph=slug)
    return 0


def check_vocabulary(model, prompt: str) -> None:
    """The demo tokenizer knows only toy-world words; an unknown one would silently become
    <unk>, so it is refused with the word named."""
    from circuit_atlas.errors import PromptError

    if not prompt.strip():
        raise PromptError("--prompt is empty")
    tokenizer = model.tokenizer
    unknown = [word for word in prompt.split()
               if tokenizer.unk_token_id in tokenizer(word, add_special_tokens=False)["input_ids"]]
    if unknown:
        raise PromptError(f"--prompt uses words the demo model does not know: {unknown}; it knows "
                          "the toy world's words only (e.g. 'the capital of the region containing "
                          "seattle is')")


def copy_features(source: Path, target: Path) -> Path:
    """A private copy of the bundled feature store: the explorer writes labels (and SQLite its
    journal) next to the store, which the installed package folder may not allow."""
    src_db, dst_db = source / "features.sqlite", target / "features.sqlite"
    fresh = (dst_db.is_file() and dst_db.stat().st_size == src_db.stat().st_size
             and dst_db.stat().st_mtime >= src_db.stat().st_mtime)
    if not fresh:
        if target.exists() and not target.is_dir():
            raise CircuitAtlasError(f"demo: {target} exists and is not a folder")
        target.mkdir(parents=True, exist_ok=True)
        for name in ("features.sqlite", "labels.json"):
            if (source / name).is_file():
                shutil.copy2(source / name, target / name)
    return target


def read_labels(features_dir: Path) -> dict[tuple[int, int], str]:
    from circuit_atlas.features import FeatureStore

    with FeatureStore(features_dir) as store:
        return store.labels()


def top_features_text(graph, labels: dict[tuple[int, int], str], n: int = 6) -> str:
    """The most influential feature nodes at the last two positions, with their labels."""
    from circuit_atlas.graph import node_influence

    influence = node_influence(graph)[:graph.n_selected]
    coords = graph.feature_coords
    last = graph.n_positions - 1
    keep = [i for i in range(graph.n_selected) if int(coords[i, 1]) >= last - 1]
    keep.sort(key=lambda i: -float(influence[i]))
    lines = ["top features at the last two positions (influence on the answer):"]
    for i in keep[:n]:
        layer, position, feature = (int(v) for v in coords[i])
        label = labels.get((layer, feature), "")
        lines.append(f"  L{layer} #{feature:<5} at {graph.tokens[position]!r:<12} "
                     f"{float(influence[i]):.3f}  {label}")
    return "\n".join(lines)
