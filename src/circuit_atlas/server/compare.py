"""Analyses of native graphs for the explorer: two graphs compared, and a graph's supernode
suggestions.

Both read the full `Graph` of a bundle (`native.NativeGraph`), so a JSON-only graph is refused
with a 409 that says why. Results are cached by the graphs' file stamps, the thresholds and the
label sources, because the diff view and the suggestions panel re-ask on every reload of a link.
Labels come from the same sources as the graph view (`Explorer.label_book`: bundle labels, then
the feature store's), so a feature is named alike in the graph and in the diff table.

The JSON shapes are those of `GraphComparison.to_json()` and `SupernodeSuggestions.to_json()`
(docs/graph-comparison.md), plus the graph ids they were computed for.
"""

from __future__ import annotations

from typing import Any

from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.features.store import FeatureStore
from circuit_atlas.features.supernodes import DEFAULT_MIN_SIMILARITY, suggest_supernodes
from circuit_atlas.graph.compare import compare_graphs
from circuit_atlas.graph.graph import Graph
from circuit_atlas.io.untrusted import json_safe
from circuit_atlas.server.catalog import GraphNotFound, LRUCache
from circuit_atlas.server.explorer import Explorer
from circuit_atlas.server.labels import FeatureKey
from circuit_atlas.server.native import NativeGraph, mismatch


class NativeGraphNeeded(CircuitAtlasError):
    """The analysis needs a bundle's native graph; this graph is a graph-JSON file only (409)."""


class GraphAnalyses:
    """Comparisons and supernode suggestions over the graphs one `Explorer` serves."""

    def __init__(self, explorer: Explorer, model: Any | None = None) -> None:
        self.explorer = explorer
        self.model = model
        self._results = LRUCache(maxsize=16)

    # -- shared -------------------------------------------------------------------------------
    def native(self, graph_id: str, field: str) -> tuple[Any, Graph]:
        """(catalog entry, native graph) of `graph_id`; errors name the request `field`."""
        try:
            entry = self.explorer.catalog.get(graph_id)
        except GraphNotFound as exc:
            raise GraphNotFound(f"{field}: {exc}") from None
        served = self.explorer.served(entry.id)
        if not isinstance(served, NativeGraph):
            raise NativeGraphNeeded(
                f"{field}: graph {graph_id!r} is a graph-JSON file without its native graph; "
                "comparisons and suggestions need a bundle written by `circuit-atlas trace`")
        return entry, served.graph

    def labels(self, entry) -> tuple[Any, dict[FeatureKey, str]]:
        """(stamp, labels by (layer, feature)) from the graph's label sources, most trusted
        winning (`server/labels.py`)."""
        stamp, book = self.explorer.label_book(entry)
        merged: dict[FeatureKey, str] = {}
        for source in reversed(book.by_key):
            merged.update(source)
        return stamp, merged

    # -- comparison ---------------------------------------------------------------------------
    def compare(self, graph_id: str, other_graph_id: str, node_threshold: float | None = None,
                edge_threshold: float | None = None) -> dict[str, Any]:
        """`compare_graphs(a, b)` as JSON, at the thresholds given (default: those of `a`)."""
        entry_a, graph_a = self.native(graph_id, "graph_id")
        entry_b, graph_b = self.native(other_graph_id, "other_graph_id")
        nt, et = self.explorer.thresholds(entry_a, node_threshold, edge_threshold)
        stamp_a, labels_a = self.labels(entry_a)
        stamp_b, labels_b = self.labels(entry_b)
        key = ("compare", entry_a.id, stamp_a, entry_b.id, stamp_b, nt, et)

        def build() -> dict[str, Any]:
            result = compare_graphs(graph_a, graph_b, node_threshold=nt, edge_threshold=et,
                                    labels={**labels_b, **labels_a})
            return {**json_safe(result.to_json()), "graph_a": entry_a.id, "graph_b": entry_b.id}

        return self._results.get_or_build(key, build)

    # -- supernode suggestions ----------------------------------------------------------------
    def suggestions(self, graph_id: str, node_threshold: float | None = None,
                    edge_threshold: float | None = None,
                    min_similarity: float = DEFAULT_MIN_SIMILARITY) -> dict[str, Any]:
        """`suggest_supernodes` over the feature nodes of the view at these thresholds, with the
        served feature store when it is one of ours (co-activation, logit effects, labels) and
        the held model's transcoders when the graph was traced with them (decoder cosines)."""
        entry, graph = self.native(graph_id, "graph_id")
        nt, et = self.explorer.thresholds(entry, node_threshold, edge_threshold)
        stamp, labels = self.labels(entry)
        store = self.explorer.features if isinstance(self.explorer.features, FeatureStore) else None
        transcoders = (self.model.transcoders
                       if self.model is not None and mismatch(graph, self.model) is None else None)
        key = ("suggest", entry.id, stamp, nt, et, round(min_similarity, 4), transcoders is not None)

        def build() -> dict[str, Any]:
            result = suggest_supernodes(graph, store, transcoders=transcoders, node_threshold=nt,
                                        edge_threshold=et, min_similarity=min_similarity,
                                        labels=labels)
            return {**json_safe(result.to_json()), "graph_id": entry.id,
                    "feature_store": store is not None}

        return self._results.get_or_build(key, build)
