"""The explorer's operations, independent of HTTP: list, view, neighbourhood, annotate, score.

The FastAPI routes in `app.py` are thin wrappers around this class, so the same logic is easy to
test and to call from a notebook. Loaded graphs and computed views are cached (keyed by the
graph files' modification stamps) because pruning a large graph takes far longer than a slider
move should.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.server import native
from circuit_atlas.server.annotations import AnnotationError, AnnotationStore
from circuit_atlas.server.bundle import check_threshold
from circuit_atlas.server.catalog import (
    GraphCatalog,
    GraphEntry,
    GraphUnreadable,
    LRUCache,
    resolve_inside,
    load_graph_json,
)
from circuit_atlas.server.features import FeatureProvider
from circuit_atlas.server.views import filter_by_influence, neighbourhood, node_label

MAX_NEIGHBOURS = 5000


class NodeNotFound(CircuitAtlasError):
    """The requested node id is not part of the graph (or of the current view)."""


class ScoresUnavailable(CircuitAtlasError):
    """Scores need the native graph, which this graph lacks."""


class View:
    """A graph-JSON document at fixed thresholds, plus its serialised bytes for responses."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.body = json.dumps(doc, ensure_ascii=False, allow_nan=False).encode("utf-8")


class Explorer:
    """Serves the graphs of one data folder, with an optional feature store."""

    def __init__(self, data_dir: str | Path, features: FeatureProvider | None = None) -> None:
        self.catalog = GraphCatalog(data_dir)
        self.features = features
        self.annotations = AnnotationStore()
        self._graphs = LRUCache(maxsize=3)
        self._docs = LRUCache(maxsize=4)
        self._views = LRUCache(maxsize=24)
        self.catalog.refresh()

    # -- loading ------------------------------------------------------------------------------
    def _native(self, entry: GraphEntry) -> Any:
        assert entry.native_dir is not None
        return self._graphs.get_or_build(
            ("native", entry.id, entry.stamp()), lambda: self._load_native(entry)
        )

    @staticmethod
    def _load_native(entry: GraphEntry) -> Any:
        try:
            return native.load_native(entry.native_dir)
        except CircuitAtlasError as exc:
            raise GraphUnreadable(f"graph {entry.id!r}: {exc}") from exc

    def _json_doc(self, entry: GraphEntry) -> dict[str, Any]:
        assert entry.json_path is not None
        return self._docs.get_or_build(
            ("json", entry.id, entry.stamp()), lambda: load_graph_json(entry.json_path)
        )

    # -- listing ------------------------------------------------------------------------------
    def list_graphs(self) -> list[dict[str, Any]]:
        entries = self.catalog.refresh()
        return [
            self.catalog.summary(e, lambda d: native.native_metadata(native.load_native(d)))
            for e in entries
        ]

    # -- views --------------------------------------------------------------------------------
    def thresholds(
        self, entry: GraphEntry, node_threshold: float | None, edge_threshold: float | None
    ) -> tuple[float, float]:
        nt = entry.node_threshold if node_threshold is None else node_threshold
        et = entry.edge_threshold if edge_threshold is None else edge_threshold
        # Round so that slider jitter maps onto a handful of cache entries.
        return (
            round(check_threshold("node_threshold", nt), 4),
            round(check_threshold("edge_threshold", et), 4),
        )

    def view(
        self, graph_id: str, node_threshold: float | None = None, edge_threshold: float | None = None
    ) -> View:
        entry = self.catalog.get(graph_id)
        nt, et = self.thresholds(entry, node_threshold, edge_threshold)
        key = ("view", entry.id, entry.stamp(), nt, et)
        return self._views.get_or_build(key, lambda: View(self._build_view(entry, nt, et)))

    def _build_view(self, entry: GraphEntry, nt: float, et: float) -> dict[str, Any]:
        if entry.native_dir is not None:
            doc = native.native_view(self._native(entry), entry.slug, nt, et)
            source, applied_et = "native", et
        else:
            doc = filter_by_influence(self._json_doc(entry), nt)
            source, applied_et = "json", None
        doc = dict(doc)
        doc["view"] = {
            "graph_id": entry.id,
            "source": source,
            "node_threshold": nt,
            "edge_threshold": applied_et,
            "default_node_threshold": entry.node_threshold,
            "default_edge_threshold": entry.edge_threshold,
            "n_nodes": len(doc.get("nodes", [])),
            "n_links": len(doc.get("links", [])),
            "has_native": entry.native_dir is not None,
        }
        return doc

    # -- neighbourhoods -----------------------------------------------------------------------
    def node(
        self,
        graph_id: str,
        node_id: str,
        *,
        node_threshold: float | None = None,
        edge_threshold: float | None = None,
        scope: str = "view",
        limit: int | None = None,
    ) -> dict[str, Any]:
        """A node's incoming and outgoing edges, strongest first, with labels.

        ``scope="view"``: edges of the pruned view at the thresholds. ``scope="full"``: every
        non-zero edge of the unpruned graph (native graphs), or of the whole JSON file.
        """
        entry = self.catalog.get(graph_id)
        labels = self.read_annotations(graph_id)
        if scope == "view":
            doc = self.view(graph_id, node_threshold, edge_threshold).doc
            result = neighbourhood(doc, node_id, labels, limit)
        elif scope == "full" and entry.native_dir is not None:
            result = self._full_native_neighbourhood(entry, node_id, labels, limit)
        elif scope == "full":
            result = neighbourhood(self._json_doc(entry), node_id, labels, limit)
        else:
            raise CircuitAtlasError(f"scope must be 'view' or 'full', got {scope!r}")
        if result is None:
            where = "graph" if scope == "full" else "current view of the graph"
            raise NodeNotFound(f"node {node_id!r} is not in the {where} {graph_id!r}")
        result["scope"] = scope
        return result

    def _full_native_neighbourhood(
        self, entry: GraphEntry, node_id: str, labels: dict[str, Any], limit: int | None
    ) -> dict[str, Any] | None:
        graph = self._native(entry)
        index = native.node_index(graph, node_id)
        if index is None:
            return None
        incoming, outgoing = native.full_edges(graph, index)

        def rows(pairs: list[tuple[int, float]]) -> list[dict[str, Any]]:
            pairs = sorted(pairs, key=lambda p: (-abs(p[1]), p[0]))
            out = []
            for other, weight in pairs[: limit or None]:
                rec = native.node_record(graph, other)
                out.append(
                    {
                        "node_id": rec["node_id"],
                        "weight": weight,
                        "label": node_label(rec, labels),
                        "feature": rec["feature"],
                        "feature_type": rec["feature_type"],
                        "layer": rec["layer"],
                        "ctx_idx": rec["ctx_idx"],
                    }
                )
            return out

        record = native.node_record(graph, index)
        return {
            "node": {**record, "label": node_label(record, labels)},
            "incoming": rows(incoming),
            "outgoing": rows(outgoing),
            "n_incoming": len(incoming),
            "n_outgoing": len(outgoing),
            "incoming_abs_sum": sum(abs(w) for _, w in incoming),
            "outgoing_abs_sum": sum(abs(w) for _, w in outgoing),
        }

    # -- subgraphs ----------------------------------------------------------------------------
    def subgraph(self, graph_id: str, node_ids: Sequence[str]) -> dict[str, Any]:
        """The given nodes with every edge among them, independent of any threshold.

        The pinned-subgraph pane uses this, so pinned nodes keep their edges when the slider
        prunes them out of the main view.
        """
        entry = self.catalog.get(graph_id)
        labels = self.read_annotations(graph_id)
        wanted = list(dict.fromkeys(node_ids))
        if entry.native_dir is not None:
            graph = self._native(entry)
            found = {nid: native.node_index(graph, nid) for nid in wanted}
            indices = [i for i in found.values() if i is not None]
            nodes = [native.node_record(graph, i) for i in indices]
            links = native.induced_links(graph, indices)
        else:
            doc = self._json_doc(entry)
            by_id = {node["node_id"]: node for node in doc["nodes"]}
            found = {nid: (nid if nid in by_id else None) for nid in wanted}
            nodes = [by_id[nid] for nid in wanted if nid in by_id]
            chosen = set(by_id) & set(wanted)
            links = [
                link
                for link in doc["links"]
                if link.get("source") in chosen and link.get("target") in chosen
            ]
        return {
            "nodes": [{**node, "label": node_label(node, labels)} for node in nodes],
            "links": links,
            "missing": [nid for nid, idx in found.items() if idx is None],
        }

    # -- annotations --------------------------------------------------------------------------
    def _annotations_path(self, entry: GraphEntry) -> Path:
        path = entry.annotations_path
        if path.is_symlink() or (path.exists() and resolve_inside(path, self.catalog.root) is None):
            raise AnnotationError(
                f"annotations file {path} is a symlink or lies outside the data folder; "
                "the server refuses to follow it"
            )
        return path

    def read_annotations(self, graph_id: str) -> dict[str, Any]:
        entry = self.catalog.get(graph_id)
        return self.annotations.read(self._annotations_path(entry))

    def patch_annotations(self, graph_id: str, patch: Any) -> dict[str, Any]:
        entry = self.catalog.get(graph_id)
        try:
            return self.annotations.patch(self._annotations_path(entry), patch)
        except PermissionError as exc:
            raise AnnotationError(
                f"cannot save annotations for {graph_id!r}: {entry.folder} is not writable"
            ) from exc

    # -- scores -------------------------------------------------------------------------------
    def scores(self, graph_id: str, node_ids: Sequence[str] | None) -> dict[str, Any]:
        entry = self.catalog.get(graph_id)
        if entry.native_dir is None:
            raise ScoresUnavailable(
                f"graph {graph_id!r} has only a JSON file; replacement/completeness scores need "
                "the native graph (write it with write_graph_bundle or `circuit-atlas trace`)"
            )
        graph = self._native(entry)
        result = native.subgraph_scores(graph, node_ids)
        result["n_nodes"] = None if node_ids is None else len(node_ids)
        return result

    # -- steering -----------------------------------------------------------------------------
    def native_graph(self, graph_id: str) -> Any | None:
        """The loaded native `Graph`, or None when the graph exists only as JSON."""
        entry = self.catalog.get(graph_id)
        return None if entry.native_dir is None else self._native(entry)

    def json_document(self, graph_id: str) -> dict[str, Any] | None:
        """The graph's JSON document (cached; the same object until the file changes), or None
        when it has no JSON file."""
        entry = self.catalog.get(graph_id)
        return None if entry.json_path is None else self._json_doc(entry)

    # -- features -----------------------------------------------------------------------------
    def feature(self, layer: int, index: int) -> dict[str, Any] | None:
        if self.features is None:
            return None
        return self.features.feature(layer, index)
