"""circuit-atlas: circuit tracing for language models.

The public API is re-exported here lazily, so `import circuit_atlas` stays fast and the CLI can
start without importing torch until a command needs it.
"""

from __future__ import annotations

from circuit_atlas._lazy import lazy_exports

__version__ = "0.1.0"

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
    "LogitDifference": "circuit_atlas.attribution",
    "intervene": "circuit_atlas.interventions",
    "generate": "circuit_atlas.interventions",
    "validate_graph": "circuit_atlas.interventions",
    "Intervention": "circuit_atlas.interventions",
    "Supernode": "circuit_atlas.interventions",
    "write_graph_bundle": "circuit_atlas.server",
    "serve": "circuit_atlas.server",
}

__getattr__, __dir__, _public = lazy_exports(__name__, _EXPORTS, globals())
__all__ = _public + ["__version__"]
