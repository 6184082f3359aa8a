"""The explorer's operations, independent of HTTP: list, view, neighbourhood, annotate, score.

The FastAPI routes in `app.py` are thin wrappers around this class, so the same logic is easy to
test and to call from a notebook. Every graph is handled through `graphs.ServedGraph`, whether
it is a native bundle or a JSON file. Loaded graphs and computed views are cached (keyed by the
graph files' modification stamps) because pruning a large graph takes far longer than a slider
move should.
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Any, Sequence

from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.graph.bundle import LABELS_FILE, read_bundle_info, read_feature_labels
from circuit_atlas.io.checks import check_threshold
from circuit_atlas.io.untrusted import json_safe
from circuit_atlas.server.annotations import AnnotationFileError, AnnotationStore
from circuit_atlas.server.catalog import (
    GraphCatalog,
    GraphEntry,
    GraphUnreadable,
    LRUCache,
    load_graph_json,
)
from circuit_atlas.server.features import (
    FeatureProvider,
    labels_stamp,
    read_provider_labels,
    without_special_tokens,
)
from circuit_atlas.server.graphs import NodeNotFound, ScoresUnavailable, ServedGraph
from circuit_atlas.server.json_graph import JsonGraph
from circuit_atlas.server.labels import LabelBook, label_nodes, label_rows, uses_cantor
from circuit_atlas.server.native import NativeGraph, read_native_metadata
from circuit_atlas.server.responses import json_bytes
from circuit_atlas.server.views import neighbourhood, node_label

__all__ = ["Explorer", "NodeNotFound", "ScoresUnavailable", "View"]

MAX_NEIGHBOURS = 5000


class View:
    """A graph-JSON document at fixed thresholds, plus its serialised bytes for responses."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.body = json_bytes(doc)


class Explorer:
    """Serves the graphs of one data folder, with an optional feature store."""

    def __init__(self, data_dir: str | Path, features: FeatureProvider | None = None) -> None:
        self.catalog = GraphCatalog(data_dir)
        self.features = features
        self.annotations = AnnotationStore(self.catalog.root)
        self._graphs = LRUCache(maxsize=4)
        self._views = LRUCache(maxsize=24)
        self._books = LRUCache(maxsize=16)
        self.catalog.refresh()

    def shown(self, text: str) -> str:
        """`text` without the absolute paths of the data folder (paths in it become relative)
        or of the feature store: messages are shown in browsers and screenshots."""
        features_root = getattr(self.features, "root", None)
        if features_root is not None:
            text = text.replace(str(features_root), "<feature store>")
        return self.catalog.shown(text)

    # -- loading ------------------------------------------------------------------------------
    def served(self, graph_id: str) -> ServedGraph:
        """The graph behind an id, loaded once per version of its files: the native graph when
        the bundle has one, else its graph-JSON document."""
        entry = self.catalog.get(graph_id)
        return self._graphs.get_or_build(("graph", entry.id, entry.stamp()),
                                         lambda: self._load(entry))

    @staticmethod
    def _load(entry: GraphEntry) -> ServedGraph:
        try:
            if entry.native_dir is None:
                assert entry.json_path is not None
                return JsonGraph.checked(load_graph_json(entry.json_path), entry.id, entry.slug,
                                         entry.json_path)
            return NativeGraph.load(entry.native_dir, entry.id, entry.slug)
        except GraphUnreadable:
            raise
        except CircuitAtlasError as exc:
            raise GraphUnreadable(f"graph {entry.id!r}: {exc}") from exc

    # -- listing ------------------------------------------------------------------------------
    def list_graphs(self) -> list[dict[str, Any]]:
        entries = self.catalog.refresh()
        return [self.catalog.summary(entry, read_native_metadata) for entry in entries]

    # -- views --------------------------------------------------------------------------------
    def thresholds(
        self, entry: GraphEntry, node_threshold: float | None, edge_threshold: float | None
    ) -> tuple[float, float]:
        nt = entry.node_threshold if node_threshold is None else node_threshold
        et = entry.edge_threshold if edge_threshold is None else edge_threshold
        # Round so that slider jitter maps onto a handful of cache entries.
        return (
            round(check_threshold(nt, "node_threshold"), 4),
            round(check_threshold(et, "edge_threshold"), 4),
        )

    def view(
        self, graph_id: str, node_threshold: float | None = None, edge_threshold: float | None = None
    ) -> View:
        entry = self.catalog.get(graph_id)
        nt, et = self.thresholds(entry, node_threshold, edge_threshold)
        stamp, book = self.label_book(entry)
        key = ("view", entry.id, entry.stamp(), stamp, nt, et)
        return self._views.get_or_build(key, lambda: View(self._build_view(entry, nt, et, book)))

    def _build_view(self, entry: GraphEntry, nt: float, et: float, book: LabelBook) -> dict[str, Any]:
        graph = self.served(entry.id)
        doc, applied_et = graph.view(nt, et)
        doc = dict(doc)
        book = book.with_clerps((doc.get("qParams") or {}).get("clerps"))
        doc["nodes"] = label_nodes(doc.get("nodes", []), book, uses_cantor(doc))
        doc["view"] = {
            "graph_id": entry.id,
            "source": graph.source,
            "node_threshold": nt,
            "edge_threshold": applied_et,
            "default_node_threshold": entry.node_threshold,
            "default_edge_threshold": entry.edge_threshold,
            "n_nodes": len(doc.get("nodes", [])),
            "n_links": len(doc.get("links", [])),
            "has_native": graph.source == "native",
        }
        return doc

    # -- labels -------------------------------------------------------------------------------
    def label_book(self, entry: GraphEntry) -> tuple[Hashable, LabelBook]:
        """The bundle's and the feature store's labels for this graph (`server/labels.py`), and a
        stamp that changes when either does."""
        try:
            stat = (entry.folder / LABELS_FILE).stat()
            bundle_stamp: Hashable = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            bundle_stamp = None
        stamp = (entry.stamp(), bundle_stamp, labels_stamp(self.features))
        book = self._books.get_or_build(("labels", entry.id, stamp),
                                        lambda: self._build_label_book(entry))
        return stamp, book

    def _build_label_book(self, entry: GraphEntry) -> LabelBook:
        sources = []
        if read_bundle_info(entry.folder) is not None:
            sources.append(read_feature_labels(entry.folder))
        store = read_provider_labels(self.features)
        graph_scan = self.catalog.summary(entry, read_native_metadata).get("scan")
        if store.labels and (store.scan is None or not isinstance(graph_scan, str)
                             or store.scan == graph_scan):
            sources.append(store.labels)
        return LabelBook(by_key=tuple(source for source in sources if source))

    def label_book_of(self, graph_id: str) -> tuple[LabelBook, bool]:
        """The labels this graph's nodes are shown with, and whether its feature values are
        Cantor pairs (for other server modules that label feature ids, e.g. `attention.py`)."""
        return self._saved_book(graph_id)

    def _saved_book(self, graph_id: str) -> tuple[LabelBook, bool]:
        """The label book with the graph file's saved ``clerps``, and whether its feature values
        are Cantor pairs (both read off the default view, which is cached)."""
        entry = self.catalog.get(graph_id)
        _, book = self.label_book(entry)
        doc = self.view(graph_id).doc
        return book.with_clerps((doc.get("qParams") or {}).get("clerps")), uses_cantor(doc)

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
        labels = self.read_annotations(graph_id)
        if scope == "view":
            doc = self.view(graph_id, node_threshold, edge_threshold).doc
            result = neighbourhood(doc, node_id, labels, limit)
        elif scope == "full":
            result = self.served(graph_id).full_neighbourhood(node_id, labels, limit)
        else:
            raise CircuitAtlasError(f"scope must be 'view' or 'full', got {scope!r}")
        if result is None:
            where = "graph" if scope == "full" else "current view of the graph"
            raise NodeNotFound(f"node {node_id!r} is not in the {where} {graph_id!r}")
        book, cantor = self._saved_book(graph_id)
        node = label_nodes([result["node"]], book, cantor)[0]
        label_rows([node], book, cantor)
        result["node"] = node
        label_rows(result["incoming"], book, cantor)
        label_rows(result["outgoing"], book, cantor)
        result["scope"] = scope
        return result

    # -- subgraphs ----------------------------------------------------------------------------
    def subgraph(self, graph_id: str, node_ids: Sequence[str]) -> dict[str, Any]:
        """The given nodes with every edge among them, independent of any threshold.

        The pinned-subgraph pane uses this, so pinned nodes keep their edges when the slider
        prunes them out of the main view.
        """
        labels = self.read_annotations(graph_id)
        wanted = list(dict.fromkeys(node_ids))
        nodes, links, missing = self.served(graph_id).subgraph(wanted)
        book, cantor = self._saved_book(graph_id)
        nodes = label_nodes(nodes, book, cantor)
        return {
            "nodes": [{**node, "label": node_label(node, labels)} for node in nodes],
            "links": links,
            "missing": missing,
        }

    # -- annotations --------------------------------------------------------------------------
    def read_annotations(self, graph_id: str) -> dict[str, Any]:
        entry = self.catalog.get(graph_id)
        return self.annotations.read(entry.annotations_path)

    def patch_annotations(self, graph_id: str, patch: Any) -> dict[str, Any]:
        entry = self.catalog.get(graph_id)
        try:
            return self.annotations.patch(entry.annotations_path, patch)
        except PermissionError as exc:
            raise AnnotationFileError(
                f"cannot save annotations for {graph_id!r}: {entry.folder} is not writable"
            ) from exc

    # -- scores -------------------------------------------------------------------------------
    def scores(self, graph_id: str, node_ids: Sequence[str] | None) -> dict[str, Any]:
        result = self.served(graph_id).scores(node_ids)
        result["n_nodes"] = None if node_ids is None else len(node_ids)
        return result

    # -- features -----------------------------------------------------------------------------
    def feature(self, layer: int, index: int) -> dict[str, Any] | None:
        if self.features is None:
            return None
        # Feature records come from files: no NaN (not JSON), no undecodable text.
        return without_special_tokens(json_safe(self.features.feature(layer, index)))
