"""Feature dashboards: what each transcoder feature responds to, computed from a text corpus.

`build_feature_store(model, corpus, out)` streams a corpus through a `ReplacementModel` and
records, per feature: top activating contexts, examples across activation quantiles, activation
density, a histogram and the output tokens its decoder promotes / suppresses. The store is one
SQLite file, resumable after interruption (`storage.py`, `build.py`).
`FeatureStore(out).card(layer, feature)` reads a `FeatureCard`; `to_frontend_json` gives the
`docs/graph-json.md` §10.2 object the explorer's feature panel draws; `set_label` labels features.

Public API (imported lazily so `import circuit_atlas.features` stays cheap):
`build_feature_store`, `BuildSettings`, `BuildReport`, `FeatureStore`, `FeatureCard`, `Example`,
`QuantileExamples`, `TokenEffect`, `Histogram`, `open_feature_store`, `open_feature_corpus`,
`FeatureStoreError`, `FeatureBuildError`; `suggest_supernodes` (groups of a graph's features
by decoder similarity, co-activation in a store and shared graph edges: `supernodes.py`).
A store can be built by several ranks under torchrun (`shards.py`).
"""

from __future__ import annotations

from circuit_atlas._lazy import lazy_exports


_EXPORTS = {
    "build_feature_store": "circuit_atlas.features.build",
    "BuildSettings": "circuit_atlas.features.build",
    "BuildReport": "circuit_atlas.features.build",
    "FeatureStore": "circuit_atlas.features.store",
    "FeatureCard": "circuit_atlas.features.store",
    "Example": "circuit_atlas.features.store",
    "QuantileExamples": "circuit_atlas.features.store",
    "TokenEffect": "circuit_atlas.features.store",
    "Histogram": "circuit_atlas.features.store",
    "open_feature_store": "circuit_atlas.features.store",
    "open_feature_corpus": "circuit_atlas.features.sources",
    "FeatureStoreError": "circuit_atlas.features.errors",
    "FeatureBuildError": "circuit_atlas.features.errors",
    "suggest_supernodes": "circuit_atlas.features.supernodes",
    "SupernodeSuggestions": "circuit_atlas.features.supernodes",
    "SuggestedSupernode": "circuit_atlas.features.supernodes",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS, globals())
