"""circuit-atlas: circuit tracing for language models.

The public API is re-exported here lazily, so `import circuit_atlas` stays fast and the CLI can
start without importing torch until a command needs it. This façade sits above every layer
(`docs/architecture.md`): it is also where `Graph.show` is wired to the explorer.
"""

from __future__ import annotations

from typing import Any

from circuit_atlas import viewer as _viewer
from circuit_atlas._lazy import lazy_exports
from circuit_atlas._version import __version__

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "CircuitAtlasError": "circuit_atlas.errors",
    "load": "circuit_atlas.replacement",
    "ReplacementModel": "circuit_atlas.replacement",
    "ReplacementRun": "circuit_atlas.replacement",
    "load_language_model": "circuit_atlas.models",
    "LanguageModel": "circuit_atlas.models",
    "load_transcoders": "circuit_atlas.transcoders",
    "Transcoders": "circuit_atlas.transcoders",
    "attribute": "circuit_atlas.attribution",
    "Graph": "circuit_atlas.graph",
    "prune": "circuit_atlas.graph",
    "graph_scores": "circuit_atlas.graph",
    "to_graph_json": "circuit_atlas.graph",
    "compare_graphs": "circuit_atlas.graph",
    "aggregate_graphs": "circuit_atlas.graph",
    "suggest_supernodes": "circuit_atlas.features.supernodes",
    "FeatureStore": "circuit_atlas.features",
    "build_feature_store": "circuit_atlas.features",
    "CustomTarget": "circuit_atlas.attribution",
    "edge_heads": "circuit_atlas.attribution",
    "EdgeHeads": "circuit_atlas.attribution",
    "qk_attribution": "circuit_atlas.attribution",
    "QKAttribution": "circuit_atlas.attribution",
    "QKExplainer": "circuit_atlas.attribution",
    "explain_graph_attention": "circuit_atlas.attribution",
    "GraphAttention": "circuit_atlas.graph",
    "AttentionError": "circuit_atlas.errors",
    "LogitDifference": "circuit_atlas.attribution",
    "intervene": "circuit_atlas.interventions",
    "generate": "circuit_atlas.interventions",
    "validate_graph": "circuit_atlas.interventions",
    "Intervention": "circuit_atlas.interventions",
    "Supernode": "circuit_atlas.interventions",
    "write_graph_bundle": "circuit_atlas.graph",
    "serve": "circuit_atlas.server",
    "show_graph": "circuit_atlas.server.notebook",
}

__getattr__, __dir__, _public = lazy_exports(__name__, _EXPORTS, globals())
__all__ = _public + ["__version__"]


def _show_in_explorer(graph: Any, **options: Any) -> Any:
    """`Graph.show`'s viewer: the explorer (`server.notebook.show_graph`), imported on first use."""
    return __getattr__("show_graph")(graph, **options)


_viewer.set_viewer(_show_in_explorer)
