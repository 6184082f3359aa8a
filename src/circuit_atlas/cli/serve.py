"""`circuit-atlas serve DIR`: browse the graphs in a folder in the local web explorer."""

from __future__ import annotations

import argparse
from pathlib import Path

from circuit_atlas.errors import CircuitAtlasError

HELP = "open the graph explorer on a folder of graphs"
DESCRIPTION = """\
Serve the attribution graphs in DIR in a local web app (http://127.0.0.1:8041/ by default).

DIR may hold graph bundles written by `circuit-atlas trace` (DIR/<slug>/graph/ + <slug>.json),
be one such bundle itself, or hold graph-JSON files (circuit-tracer / Neuronpedia format).
Labels, supernodes and pinned sets you save in the app are written next to each graph as
<slug>.annotations.json.
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from circuit_atlas.server.runner import DEFAULT_HOST, DEFAULT_PORT

    parser = subparsers.add_parser(
        "serve",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("data_dir", metavar="DIR", help="folder of graphs to serve")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free)"
    )
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default {DEFAULT_HOST}: this machine only)",
    )
    parser.add_argument(
        "--features",
        metavar="FEATURES_DIR",
        default=None,
        help="feature store for the feature panel (dashboards, or feature JSON files)",
    )
    parser.add_argument(
        "--no-browser", action="store_true", help="do not open a browser tab on start"
    )
    parser.set_defaults(func=run)
    return parser


def serve_folder(
    data_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8041,
    open_browser: bool = True,
    features_dir: str | Path | None = None,
) -> None:
    """Check the arguments and serve ``data_dir`` until interrupted (also used by `trace --serve`)."""
    from circuit_atlas.server.runner import serve

    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise CircuitAtlasError(f"serve: {data_dir} is not a folder")
    if not 0 <= port <= 65535:
        raise CircuitAtlasError(f"serve: --port must lie in 0..65535, got {port}")
    serve(data_dir, host=host, port=port, open_browser=open_browser, features_dir=features_dir)


def run(args: argparse.Namespace) -> int:
    serve_folder(
        args.data_dir,
        host=args.host,
        port=args.port,
        open_browser=not args.no_browser,
        features_dir=args.features,
    )
    return 0
