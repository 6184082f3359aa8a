"""The local graph explorer: a FastAPI app over a folder of graphs, plus the static web app.

Public API (imported lazily, so `import circuit_atlas.server` stays cheap):

- `create_app(data_dir, *, features=None, allowed_hosts=None, max_body_bytes=..., model=None)`
  -> FastAPI (`model`: a loaded `ReplacementModel` for the steering endpoints)
- `serve(data_dir, *, host="127.0.0.1", port=8041, open_browser=True, features_dir=None,
  model=None)`
- `BackgroundServer(app, host="127.0.0.1", port=0)` (`.start()`, `.url`, `.stop()`)
- `show_graph(graph_or_folder, ...)`: the explorer inline in a notebook (what `Graph.show` uses)
- `FeatureProvider` protocol and `load_feature_provider(path)`
- `write_graph_bundle` (defined in `circuit_atlas.graph.bundle`, re-exported for convenience)

The data-folder layout is documented in `circuit_atlas.graph.bundle`. Inside the server every
graph is a `graphs.ServedGraph` (native bundle or graph-JSON file).
"""

from __future__ import annotations

from circuit_atlas._lazy import lazy_exports


_EXPORTS = {
    "create_app": "circuit_atlas.server.app",
    "serve": "circuit_atlas.server.runner",
    "BackgroundServer": "circuit_atlas.server.runner",
    "write_graph_bundle": "circuit_atlas.graph.bundle",
    "show_graph": "circuit_atlas.server.notebook",
    "FeatureProvider": "circuit_atlas.server.features",
    "load_feature_provider": "circuit_atlas.server.features",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS, globals())
