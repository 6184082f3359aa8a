"""Per-head edges and QK explanations for the explorer's attention panel.

An edge between two positions runs through frozen attention; the panel asks which heads carry it
and, for one head, which (query-side term x key-side term) pairs make the head attend there
(docs/attention.md). The answers come from, in this order:

1. explanations stored beside the graph: a bundle's ``attention.json`` + ``attention.safetensors``
   (`graph.attention.GraphAttention`), or the optional ``attention`` object of a JSON-only graph;
2. the model the server holds (``serve --model ... --transcoders ...``), computed on demand for a
   native graph traced with it (`attribution.heads.HeadAttributor`, `attribution.qk.QKExplainer`,
   built once per graph and run under the steerer's model lock: both attach hooks to the model);
3. otherwise a 409 (`AttentionUnavailable`) that says how to precompute them.

Stored explanations are files anyone may have written: their edges and explanations are checked
against pydantic models here (`StoredEdge`, `StoredQK`) and a bad one answers 422 naming the file.
Every term is labelled like the rest of the explorer (`Explorer.subgraph` and the graph's label
book: annotations, the file's labels, the bundle's and the feature store's), falling back to the
explanation's own description ("token ' is' @8").
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from circuit_atlas.attribution.heads import HeadAttributor
from circuit_atlas.attribution.qk import QKExplainer
from circuit_atlas.errors import AttentionError, CircuitAtlasError, GraphFileError
from circuit_atlas.graph.attention import ATTENTION_JSON, ATTENTION_TENSORS, GraphAttention
from circuit_atlas.io.cantor import cantor_pair
from circuit_atlas.server.catalog import GraphEntry, GraphUnreadable, LRUCache, resolve_inside
from circuit_atlas.server.explorer import Explorer
from circuit_atlas.server.graphs import NodeNotFound, NotSteerable, ServedGraph
from circuit_atlas.server.json_graph import JsonGraph
from circuit_atlas.server.labels import label_nodes
from circuit_atlas.server.native import NativeGraph
from circuit_atlas.server.schemas import describe_errors
from circuit_atlas.server.views import node_label

__all__ = ["AttentionService", "AttentionUnavailable", "PRECOMPUTE_HINT"]

PRECOMPUTE_HINT = (
    "precompute them with `circuit-atlas attention GRAPH_DIR --precompute` (stored beside the "
    "graph and in its graph JSON), or start the explorer with the model the graph was traced with "
    "(`circuit-atlas serve DIR --model MODEL --transcoders TRANSCODERS`) to compute them on demand"
)
DEFAULT_TOP = 10
MAX_CACHED_GRAPHS = 4
_FEATURE_ID = re.compile(r"(\d+)_(-?\d+)_(\d+)")
_TOKEN_ID = re.compile(r"E_\d+_\d+")


class AttentionUnavailable(CircuitAtlasError):
    """Nothing stored answers the request and the server cannot compute it (answered 409)."""


# ---------------------------------------------------------------------- stored shapes
class _Checked(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False, strict=True)


class StoredHead(_Checked):
    layer: int
    head: int
    weight: float
    query_position: int
    key_position: int
    explanation: int | None = None


class StoredEdge(_Checked):
    source: str
    target: str
    edge: float
    hop: str = "last"
    source_position: int
    target_position: int
    residual: float = 0.0
    total: float
    heads: list[StoredHead]


class StoredPair(_Checked):
    query_term: str
    key_term: str
    value: float
    weight_effect: float


class StoredTerm(_Checked):
    id: str
    kind: str = ""
    label: str = ""
    position: int | None = None
    value: float


class StoredQK(_Checked):
    layer: int
    head: int
    query_position: int
    key_position: int
    query_token: str
    key_token: str
    score: float
    logit: float
    softcap: float | None = None
    attention_weight: float
    unexplained: float = 0.0
    n_query_terms: int
    n_key_terms: int
    pairs: list[StoredPair]
    query_terms: list[StoredTerm]
    key_terms: list[StoredTerm]
    labels: dict[str, str] = {}


class JsonExtension(_Checked):
    """The graph JSON's optional ``attention`` object (docs/attention.md)."""

    format: Literal["circuit-atlas-attention"]
    version: int
    edges: list[StoredEdge]
    explanations: list[StoredQK]


def _checked(model: type[BaseModel], value: Any, where: str) -> dict[str, Any]:
    try:
        return model.model_validate(value).model_dump()
    except ValidationError as exc:
        raise GraphUnreadable(f"{where} is not a valid attention explanation: "
                              f"{describe_errors(exc.errors(), skip=())}") from None


# ---------------------------------------------------------------------- sources
class Stored(Protocol):
    """Explanations stored for one graph, in the JSON shapes above."""

    def edges(self) -> list[tuple[str, str]]: ...

    def edge(self, source: str, target: str) -> dict[str, Any] | None: ...

    def explanation(self, layer: int, head: int, query: int, key: int,
                    top: int) -> dict[str, Any] | None: ...


class BundleAttention:
    """A bundle's ``attention.json`` + ``attention.safetensors``."""

    def __init__(self, stored: GraphAttention, where: str) -> None:
        self.stored, self.where = stored, where

    def edges(self) -> list[tuple[str, str]]:
        return [(e["source"], e["target"]) for e in self.stored.edges]

    def edge(self, source: str, target: str) -> dict[str, Any] | None:
        found = self.stored.edge(source, target)
        return None if found is None else _checked(StoredEdge, found, self.where)

    def explanation(self, layer: int, head: int, query: int, key: int,
                    top: int) -> dict[str, Any] | None:
        found = self.stored.explanation(layer, head, query, key)
        return None if found is None else _checked(StoredQK, found.to_json(top), self.where)


class ExtensionAttention:
    """The ``attention`` object of a graph-JSON document (checked when read)."""

    def __init__(self, value: Any, where: str) -> None:
        self.data = _checked(JsonExtension, value, where)

    def edges(self) -> list[tuple[str, str]]:
        return [(e["source"], e["target"]) for e in self.data["edges"]]

    def edge(self, source: str, target: str) -> dict[str, Any] | None:
        return next((e for e in self.data["edges"]
                     if e["source"] == source and e["target"] == target), None)

    def explanation(self, layer: int, head: int, query: int, key: int,
                    top: int) -> dict[str, Any] | None:
        for item in self.data["explanations"]:
            if (item["layer"], item["head"], item["query_position"], item["key_position"]) == \
                    (layer, head, query, key):
                return {**item, "pairs": item["pairs"][:top], "query_terms": item["query_terms"][:top],
                        "key_terms": item["key_terms"][:top]}
        return None


@dataclass
class Computer:
    """The model-side tools for one native graph, built once (the clean run is shared)."""

    served: NativeGraph
    attributor: HeadAttributor
    explainer: QKExplainer


# ---------------------------------------------------------------------- the service
class AttentionService:
    """Answers the attention panel's requests for the graphs of one explorer.

    ``model`` (a `ReplacementModel` or None) and ``lock`` are the steerer's: computing on demand
    attaches hooks to the model, which must not happen while a steering run uses it."""

    def __init__(self, explorer: Explorer, model: Any | None, lock: threading.Lock) -> None:
        self.explorer = explorer
        self.model = model
        self.lock = lock
        self._stored = LRUCache(maxsize=8)
        self._computers: dict[str, tuple[ServedGraph, Computer | str]] = {}
        self._computers_lock = threading.Lock()

    # -- sources ------------------------------------------------------------------------------
    def stored(self, graph_id: str) -> Stored | None:
        """The explanations stored for this graph, or None (loaded once per file version)."""
        entry = self.explorer.catalog.get(graph_id)
        served = self.explorer.served(graph_id)
        if isinstance(served, JsonGraph):
            value = served.doc.get("attention")
            if value is None:
                return None
            return self._stored.get_or_build(
                ("json", entry.id, entry.stamp()),
                lambda: ExtensionAttention(value, f"the 'attention' object of {entry.slug}.json"))
        folder = self._attention_folder(entry)
        if folder is None:
            return None
        stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size)
                      for p in (folder / ATTENTION_JSON, folder / ATTENTION_TENSORS) if p.is_file())
        return self._stored.get_or_build(("bundle", entry.id, str(folder), stamp),
                                         lambda: self._load_bundle(folder))

    def _attention_folder(self, entry: GraphEntry) -> Path | None:
        """Where the bundle keeps its explanation files (the bundle folder, or the native graph's
        own folder), when both files are there and inside the data folder."""
        root = self.explorer.catalog.root
        for folder in (entry.folder, entry.native_dir):
            if folder is None:
                continue
            files = [resolve_inside(folder / name, root) for name in (ATTENTION_JSON, ATTENTION_TENSORS)]
            if all(f is not None and f.is_file() for f in files):
                return folder
        return None

    def _load_bundle(self, folder: Path) -> BundleAttention:
        shown = self.explorer.shown(str(folder / ATTENTION_JSON))
        try:
            return BundleAttention(GraphAttention.load(folder), shown)
        except GraphFileError as exc:
            raise GraphUnreadable(self.explorer.shown(str(exc))) from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise GraphUnreadable(f"{shown} is not a valid attention file: {exc}") from exc

    def computer(self, graph_id: str) -> Computer | str:
        """The model-side tools for this graph, or why it cannot have them."""
        if self.model is None:
            return "the server holds no model"
        served = self.explorer.served(graph_id)
        cached = self._cached(graph_id, served)
        if cached is not None:
            return cached
        if not isinstance(served, NativeGraph):
            built: Computer | str = ("it is a JSON file without its native graph, and explanations "
                                     "are computed from the native graph")
        else:
            with self.lock:  # a request that waited here may find it built already
                cached = self._cached(graph_id, served)
                if cached is not None:
                    return cached
                built = self._build(served)
        with self._computers_lock:
            self._computers[graph_id] = (served, built)
            while len(self._computers) > MAX_CACHED_GRAPHS:  # each holds a clean run
                self._computers.pop(next(iter(self._computers)))
        return built

    def _cached(self, graph_id: str, served: ServedGraph) -> Computer | str | None:
        with self._computers_lock:
            cached = self._computers.get(graph_id)
        # the explorer hands out a new served object when the graph's files change
        return cached[1] if cached is not None and cached[0] is served else None

    def _build(self, served: NativeGraph) -> Computer | str:
        try:
            served.steerable(self.model)  # names and layer count
            explainer = QKExplainer(self.model, served.graph.input_ids)
            attributor = HeadAttributor(self.model, served.graph, run=explainer.run)
        except (NotSteerable, AttentionError) as exc:
            return f"it was not traced with the loaded model ({exc})"
        return Computer(served, attributor, explainer)

    def _unavailable(self, graph_id: str, what: str, why: str) -> AttentionUnavailable:
        return AttentionUnavailable(f"graph {graph_id!r} has no stored explanation of {what}, and "
                                    f"it cannot be computed here: {why}; {PRECOMPUTE_HINT}")

    # -- requests -----------------------------------------------------------------------------
    def status(self, graph_id: str) -> dict[str, Any]:
        """Whether the panel can answer for this graph, and which edges are stored."""
        stored = self.stored(graph_id)
        computer = self.computer(graph_id)
        computable = not isinstance(computer, str)
        reason = None
        if stored is None and not computable:
            reason = (f"graph {graph_id!r} has no stored attention explanations and they cannot be "
                      f"computed here ({computer}); {PRECOMPUTE_HINT}")
        return {"graph_id": graph_id, "stored": stored is not None, "computable": computable,
                "reason": reason,
                "edges": [{"source": s, "target": t} for s, t in (stored.edges() if stored else [])]}

    def edge(self, graph_id: str, source: str, target: str) -> dict[str, Any]:
        """The heads carrying the edge source -> target, strongest first, with their shares."""
        self._check_nodes(graph_id, source, target)
        edge, origin = self._edge(graph_id, source, target)
        computer = self.computer(graph_id)
        stored = self.stored(graph_id)
        heads = []
        for row in edge["heads"]:
            explained = not isinstance(computer, str) or (
                stored is not None and row.get("explanation") is not None)
            heads.append({"layer": row["layer"], "head": row["head"], "weight": row["weight"],
                          "share": row["weight"] / edge["edge"] if edge["edge"] else None,
                          "query_position": row["query_position"],
                          "key_position": row["key_position"], "explained": explained})
        labels = self._labels(graph_id, [source, target], {})
        same = edge["source_position"] == edge["target_position"]
        return {
            "graph_id": graph_id, "source": source, "target": target,
            "source_label": labels.get(source, ""), "target_label": labels.get(target, ""),
            "source_position": edge["source_position"], "target_position": edge["target_position"],
            "same_position": same, "edge": edge["edge"], "hop": edge["hop"],
            "residual": edge["residual"], "total": edge["total"], "heads": heads, "origin": origin,
            "note": SAME_POSITION_NOTE if same else None,
        }

    def head(self, graph_id: str, source: str, target: str, layer: int, head: int,
             top: int = DEFAULT_TOP) -> dict[str, Any]:
        """Why head `layer.head` attends where it carries this edge: its top term pairs."""
        self._check_nodes(graph_id, source, target)
        self._check_layer(graph_id, layer)
        edge, _ = self._edge(graph_id, source, target)
        row = next((r for r in edge["heads"] if (r["layer"], r["head"]) == (layer, head)), None)
        query, key = ((row["query_position"], row["key_position"]) if row is not None
                      else (edge["target_position"], edge["source_position"]))
        data, origin = None, "stored"
        stored = self.stored(graph_id)
        if stored is not None:
            data = stored.explanation(layer, head, query, key, top)
        if data is None:
            computer = self.computer(graph_id)
            if isinstance(computer, str):
                known = ", ".join(f"{r['layer']}.{r['head']}" for r in edge["heads"]
                                  if r.get("explanation") is not None) or "none"
                raise self._unavailable(graph_id, f"head {layer}.{head} of edge {source} -> "
                                        f"{target} (stored heads: {known})", computer)
            with self.lock:
                qk = computer.explainer.explain(layer, head, query, key)
            data, origin = _checked(StoredQK, qk.to_json(top), "the computed explanation"), "computed"
        return self._explanation(graph_id, source, target, data, origin)

    # -- pieces -------------------------------------------------------------------------------
    def _edge(self, graph_id: str, source: str, target: str) -> tuple[dict[str, Any], str]:
        stored = self.stored(graph_id)
        found = stored.edge(source, target) if stored is not None else None
        if found is not None:
            return found, "stored"
        computer = self.computer(graph_id)
        if isinstance(computer, str):
            raise self._unavailable(graph_id, f"edge {source} -> {target}", computer)
        with self.lock:
            heads = computer.attributor.edge_heads(source, target)
        return _checked(StoredEdge, heads.to_json(), "the computed edge"), "computed"

    def _check_nodes(self, graph_id: str, source: str, target: str) -> None:
        _, _, missing = self.explorer.served(graph_id).subgraph([source, target])
        if missing:
            raise NodeNotFound(f"{'source' if source in missing else 'target'} node "
                               f"{missing[0]!r} is not in graph {graph_id!r}")

    def _check_layer(self, graph_id: str, layer: int) -> None:
        served = self.explorer.served(graph_id)
        if isinstance(served, NativeGraph) and not 0 <= layer < served.graph.n_layers:
            raise AttentionError(f"layer {layer} is out of range 0..{served.graph.n_layers - 1}")

    def _explanation(self, graph_id: str, source: str, target: str, data: dict[str, Any],
                     origin: str) -> dict[str, Any]:
        pairs = [p for p in data["pairs"] if p["value"] != 0.0 or p["weight_effect"] != 0.0]
        described = {t["id"]: t for t in data["query_terms"] + data["key_terms"]}
        ids = list(dict.fromkeys([p[k] for p in pairs for k in ("query_term", "key_term")]
                                 + list(described)))
        fallbacks = {i: described[i]["label"] if i in described else data["labels"].get(i, "")
                     for i in ids}
        labels, in_graph = self._term_labels(graph_id, ids, fallbacks)

        def term(term_id: str, value: float | None = None) -> dict[str, Any]:
            info = described.get(term_id, {})
            out = {"id": term_id, "kind": info.get("kind") or term_kind(term_id),
                   "label": labels.get(term_id, ""), "position": info.get("position"),
                   "node": term_kind(term_id) in ("token", "feature", "error"),
                   "in_graph": term_id in in_graph}
            if out["position"] is None:
                out["position"] = term_position(term_id)
            return out if value is None else {**out, "value": value}

        return {
            "graph_id": graph_id, "source": source, "target": target, "origin": origin,
            **{k: data[k] for k in ("layer", "head", "query_position", "key_position",
                                    "query_token", "key_token", "score", "logit", "softcap",
                                    "attention_weight", "unexplained", "n_query_terms",
                                    "n_key_terms")},
            "pairs": [{"query": term(p["query_term"]), "key": term(p["key_term"]),
                       "value": p["value"], "weight_effect": p["weight_effect"]} for p in pairs],
            "query_terms": [term(t["id"], t["value"]) for t in data["query_terms"] if t["value"]],
            "key_terms": [term(t["id"], t["value"]) for t in data["key_terms"] if t["value"]],
        }

    def _term_labels(self, graph_id: str, ids: list[str],
                     fallbacks: Mapping[str, str]) -> tuple[dict[str, str], set[str]]:
        """Labels of the terms (as the explorer labels nodes) and the ids that are graph nodes."""
        node_like = [i for i in ids if term_kind(i) in ("token", "feature", "error")]
        found = self.explorer.subgraph(graph_id, node_like)
        in_graph = {node["node_id"] for node in found["nodes"]}
        labels = self._labels(graph_id, node_like, fallbacks, found["nodes"])
        for term_id in ids:
            labels.setdefault(term_id, fallbacks.get(term_id, ""))
        return labels, in_graph

    def _labels(self, graph_id: str, ids: list[str], fallbacks: Mapping[str, str],
                nodes: list[dict[str, Any]] | None = None) -> dict[str, str]:
        """The explorer's label of each id: of its graph node when it is one, else (features the
        pruned graph left out) from the graph's label book; else the fallback."""
        if nodes is None:
            nodes = self.explorer.subgraph(graph_id, ids)["nodes"]
        labels = {node["node_id"]: node.get("label") or "" for node in nodes}
        book, cantor = self.explorer.label_book_of(graph_id)
        annotations = self.explorer.read_annotations(graph_id)
        for term_id in ids:
            if labels.get(term_id):
                continue
            match = _FEATURE_ID.fullmatch(term_id)
            if match and match.group(2) != "-1":
                layer, feature = int(match.group(1)), int(match.group(2))
                pseudo = {"node_id": term_id, "feature_type": "cross layer transcoder",
                          "layer": str(layer), "clerp": "",
                          "feature": cantor_pair(layer, feature) if cantor else feature}
                text = node_label(label_nodes([pseudo], book, cantor)[0], annotations)
                if text:
                    labels[term_id] = text
                    continue
            labels[term_id] = labels.get(term_id) or fallbacks.get(term_id, "")
        return labels


SAME_POSITION_NOTE = (
    "Both ends sit at the same position, so no head moves this edge between positions: it runs on "
    "the residual stream, plus any attention of a position to itself."
)


def term_kind(term_id: str) -> str:
    """The kind of a term from its id alone (stored pairs name their terms only by id)."""
    if _TOKEN_ID.fullmatch(term_id):
        return "token"
    match = _FEATURE_ID.fullmatch(term_id)
    if match:
        return "error" if match.group(2) == "-1" else "feature"
    return "other"


def term_position(term_id: str) -> int | None:
    tail = term_id.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() and "_" in term_id else None

