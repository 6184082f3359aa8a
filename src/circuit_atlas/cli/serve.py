"""`circuit-atlas serve DIR`: browse the graphs in a folder in the local web explorer."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from circuit_atlas.cli.common import add_device_map_arguments, add_lazy_encoder_argument
from circuit_atlas.errors import CircuitAtlasError

HELP = "open the graph explorer on a folder of graphs"
DESCRIPTION = """\
Serve the attribution graphs in DIR in a local web app (http://127.0.0.1:8041/ by default).

DIR may hold graph bundles written by `circuit-atlas trace` (DIR/<slug>/graph/ + <slug>.json),
be one such bundle itself, or hold graph-JSON files (circuit-tracer / Neuronpedia format).
Labels, supernodes and pinned sets you save in the app are written next to each graph as
<slug>.annotations.json.

With --model and --transcoders the server loads the replacement model once and holds it, and the
Steer panel can ablate, scale or set the pinned features of graphs traced with that model and
those transcoders, showing top tokens and generated text before/after.

examples:
  circuit-atlas serve graphs/
  circuit-atlas serve graphs/ --model google/gemma-2-2b --transcoders gemma --device cuda
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from circuit_atlas.server.hosts import DEFAULT_HOST, DEFAULT_PORT

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
    steer = parser.add_argument_group("steering (optional; needs both --model and --transcoders)")
    steer.add_argument("--model", default=None, help="hub id or local directory of the model")
    steer.add_argument(
        "--transcoders", default=None, help="hub id (repo[/sub][@rev]) or local directory"
    )
    add_lazy_encoder_argument(steer)
    steer.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps ... (default: auto)")
    steer.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], default=None,
        help="model dtype (default float32)",
    )
    add_device_map_arguments(steer)
    parser.set_defaults(func=run)
    return parser


def serve_folder(
    data_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8041,
    open_browser: bool = True,
    features_dir: str | Path | None = None,
    model: Any | None = None,
    graph: str | None = None,
) -> None:
    """Check the arguments and serve ``data_dir`` until interrupted (also used by `trace --serve`,
    which may pass the model it already holds as ``model`` to enable steering, and the graph it
    wrote as ``graph`` to open the browser on it)."""
    from circuit_atlas.server.runner import serve

    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise CircuitAtlasError(f"serve: {data_dir} is not a folder")
    if not 0 <= port <= 65535:
        raise CircuitAtlasError(f"serve: --port must lie in 0..65535, got {port}")
    serve(
        data_dir, host=host, port=port, open_browser=open_browser, features_dir=features_dir,
        model=model, graph=graph,
    )


def load_steering_model(
    model: str | None, transcoders: str | None, device: str | None, dtype: str | None,
    lazy_encoder: bool = False, device_map: str | None = None, offload_folder: str | None = None,
) -> Any | None:
    """The replacement model to hold for steering, or None when neither flag is given."""
    if model is None and transcoders is None:
        if device is not None or dtype is not None or device_map is not None:
            raise CircuitAtlasError("serve: --device, --device-map and --dtype need --model and "
                                    "--transcoders")
        return None
    if model is None or transcoders is None:
        missing = "--transcoders" if transcoders is None else "--model"
        raise CircuitAtlasError(
            f"serve: steering needs both --model and --transcoders; {missing} is missing"
        )
    from circuit_atlas.cli.common import model_placement
    from circuit_atlas.replacement import load

    placement = model_placement(argparse.Namespace(device=device, device_map=device_map,
                                                   offload_folder=offload_folder))
    print(f"loading {model} with transcoders {transcoders} for steering…", flush=True)
    return load(model, transcoders, dtype=dtype, lazy_encoder=lazy_encoder, **placement)


def run(args: argparse.Namespace) -> int:
    if not Path(args.data_dir).expanduser().is_dir():
        raise CircuitAtlasError(f"serve: {args.data_dir} is not a folder")
    if args.features is not None and not Path(args.features).expanduser().exists():
        # Checked before the (slow) model load, so a typo fails fast.
        raise CircuitAtlasError(f"serve: --features {args.features} does not exist")
    if not 0 <= args.port <= 65535:
        raise CircuitAtlasError(f"serve: --port must lie in 0..65535, got {args.port}")
    model = load_steering_model(args.model, args.transcoders, args.device, args.dtype, args.lazy_encoder,
                                args.device_map, args.offload_folder)
    serve_folder(
        args.data_dir,
        host=args.host,
        port=args.port,
        open_browser=not args.no_browser,
        features_dir=args.features,
        model=model,
    )
    return 0
