"""A native graph bundle as the explorer serves it: `NativeGraph`, the `ServedGraph` (and
`Steerable`) over a loaded `Graph`.

Keeping everything the server asks of the graph package behind this one class means the web
API's shapes stay put if that package changes, and the JSON-only class (`json_graph.JsonGraph`)
mirrors the same methods.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from circuit_atlas.errors import CircuitAtlasError, GraphFileError
from circuit_atlas.graph import Graph, graph_scores, to_graph_json
from circuit_atlas.graph.export import FEATURE_TYPES
from circuit_atlas.io.cantor import cantor_pair
from circuit_atlas.server.graphs import Annotations, NotSteerable
from circuit_atlas.server.identity import same_ref
from circuit_atlas.server.views import node_label


def native_metadata(graph: Graph) -> dict[str, Any]:
    """The graph-list fields (`docs/graph-json.md` §3) of a native graph."""
    scan = graph.transcoder_scan
    return {
        "prompt": graph.prompt,
        "prompt_tokens": list(graph.tokens),
        "scan": scan if isinstance(scan, str) or scan is None else "custom",
        "info": {"model": graph.model_name},
    }


def read_native_metadata(folder: Path) -> dict[str, Any]:
    """`native_metadata` of the graph saved in `folder` (for the graph list)."""
    return native_metadata(Graph.load(folder))


def mismatch(graph: Graph, model: Any) -> str | None:
    """Why `graph` cannot be steered with `model`, or None when it was traced with it."""
    lm, tc = model.lm, model.transcoders
    if not same_ref(graph.model_name, lm.name):
        return (
            f"the graph was traced with model {graph.model_name!r} but the server holds "
            f"{lm.name!r}"
        )
    if not same_ref(graph.transcoder_scan, tc.scan):
        return (
            f"the graph was traced with transcoders {graph.transcoder_scan!r} but the server "
            f"holds {tc.scan!r}"
        )
    if graph.n_layers != model.n_layers:
        return f"the graph has {graph.n_layers} layers but the model has {model.n_layers}"
    return None


class NativeGraph:
    """A bundle's native `Graph` (pruned on demand, every edge available)."""

    source = "native"
    checks_with_tokenizer = False
    warning = None
    tokens_from = None

    def __init__(self, graph: Graph, graph_id: str, slug: str) -> None:
        self.graph = graph
        self.graph_id, self.slug = graph_id, slug
        self.label = f"graph {graph_id!r}"

    @classmethod
    def load(cls, path: Path, graph_id: str, slug: str) -> "NativeGraph":
        """`Graph.load` (file problems raise the package's `GraphFileError`), refusing graphs
        with NaN or infinite values: no view, edge list or score of them would be JSON."""
        graph = Graph.load(path)
        problem = graph.first_non_finite()
        if problem is not None:
            raise GraphFileError(
                f"the graph holds a non-finite number ({problem}), so it cannot be shown; it "
                "comes from numerical trouble while tracing (try float32) or from an edited file"
            )
        return cls(graph, graph_id, slug)

    @property
    def input_ids(self) -> torch.Tensor:
        return self.graph.input_ids

    # -- ServedGraph --------------------------------------------------------------------------
    def view(self, node_threshold: float, edge_threshold: float) -> tuple[dict[str, Any], float]:
        return to_graph_json(self.graph, self.slug, node_threshold, edge_threshold), edge_threshold

    def full_neighbourhood(self, node_id: str, annotations: Annotations,
                           limit: int | None) -> dict[str, Any] | None:
        index = self.node_index(node_id)
        if index is None:
            return None
        incoming, outgoing = self.full_edges(index)

        def rows(pairs: list[tuple[int, float]]) -> list[dict[str, Any]]:
            pairs = sorted(pairs, key=lambda p: (-abs(p[1]), p[0]))
            out = []
            for other, weight in pairs[: limit or None]:
                rec = self.node_record(other)
                out.append({"node_id": rec["node_id"], "weight": weight,
                            "label": node_label(rec, annotations), "feature": rec["feature"],
                            "feature_type": rec["feature_type"], "layer": rec["layer"],
                            "ctx_idx": rec["ctx_idx"]})
            return out

        record = self.node_record(index)
        return {
            "node": {**record, "label": node_label(record, annotations)},
            "incoming": rows(incoming),
            "outgoing": rows(outgoing),
            "n_incoming": len(incoming),
            "n_outgoing": len(outgoing),
            "incoming_abs_sum": sum(abs(w) for _, w in incoming),
            "outgoing_abs_sum": sum(abs(w) for _, w in outgoing),
        }

    def subgraph(self, node_ids: Sequence[str]) -> tuple[list[dict], list[dict], list[str]]:
        found = {nid: self.node_index(nid) for nid in node_ids}
        indices = [i for i in found.values() if i is not None]
        nodes = [self.node_record(i) for i in indices]
        missing = [nid for nid, index in found.items() if index is None]
        return nodes, self.induced_links(indices), missing

    def scores(self, node_ids: Sequence[str] | None) -> dict[str, Any]:
        """Replacement and completeness of the whole graph or of a pinned subgraph."""
        if node_ids is None:
            scores = graph_scores(self.graph)
        else:
            indices = [self.node_index(node_id) for node_id in node_ids]
            unknown = [nid for nid, idx in zip(node_ids, indices) if idx is None]
            if unknown:
                raise CircuitAtlasError(f"unknown node ids for this graph: {unknown[:10]}")
            scores = graph_scores(self.graph, subgraph=indices)
        return {"replacement": float(scores.replacement),
                "completeness": float(scores.completeness)}

    def steerable(self, model: Any) -> "NativeGraph":
        why = mismatch(self.graph, model)
        if why is not None:
            raise NotSteerable(why)
        return self

    # -- Steerable ----------------------------------------------------------------------------
    def node_kind(self, node_id: str) -> str | None:
        index = self.node_index(node_id)
        return None if index is None else self.graph.node_kind(index)

    def feature_coords(self, node_id: str) -> tuple[int, int, int]:
        layer, pos, feat = (int(v) for v in self.graph.feature_coords[self.graph.node_index(node_id)])
        return layer, pos, feat

    # -- the pieces ---------------------------------------------------------------------------
    def node_index(self, node_id: str) -> int | None:
        try:
            return self.graph.node_index(node_id)
        except KeyError:
            return None

    def node_record(self, index: int) -> dict[str, Any]:
        """A `docs/graph-json.md` §5 node dict for dense index `index` (no influence: not
        pruned here)."""
        graph = self.graph
        kind = graph.node_kind(index)
        record: dict[str, Any] = {
            "node_id": graph.node_id(index),
            "feature_type": FEATURE_TYPES[kind],
            "description": graph.node_label(index),
            "clerp": "",
            "activation": None,
        }
        if kind == "feature":
            layer, pos, feat = (int(v) for v in graph.feature_coords[index])
            record.update(layer=str(layer), ctx_idx=pos, feature=cantor_pair(layer, feat),
                          activation=float(graph.selected_activations[index]))
        elif kind == "error":
            layer, pos = divmod(index - graph.n_selected, graph.n_positions)
            record.update(layer=str(layer), ctx_idx=pos, feature=-1)
        elif kind == "token":
            pos = index - graph.token_range.start
            record.update(layer="E", ctx_idx=pos, feature=pos)
        else:
            i = index - graph.n_sources
            prob = float(graph.logit_probabilities[i])
            record.update(layer=str(graph.n_layers + 1), ctx_idx=graph.n_positions - 1,
                          feature=int(graph.logit_token_ids[i]),
                          clerp=f'Output "{graph.logit_tokens[i]}" (p={prob:.3f})', token_prob=prob)
        return record

    def full_edges(self, index: int) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
        """All non-zero (other node, weight) pairs into and out of dense node `index`.

        Incoming weights are the node's storage row; outgoing ones its storage column (only
        features, errors and tokens have columns).
        """
        graph = self.graph
        incoming: list[tuple[int, float]] = []
        row = graph.storage_row(index)
        if row is not None:
            values = graph.adjacency[row]
            nz = torch.nonzero(values, as_tuple=True)[0]
            incoming = [(int(s), float(values[s])) for s in nz]
        outgoing: list[tuple[int, float]] = []
        if index < graph.n_sources:
            column = graph.adjacency[:, index]
            nz = torch.nonzero(column, as_tuple=True)[0]
            targets = graph.dense_rows[nz]
            outgoing = [(int(t), float(column[r])) for t, r in zip(targets, nz)]
        return incoming, outgoing

    def induced_links(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Every non-zero edge of the unpruned graph whose both ends are in `indices`."""
        graph = self.graph
        chosen = sorted(set(indices))
        sources = [i for i in chosen if i < graph.n_sources]
        links: list[dict[str, Any]] = []
        if not sources:
            return links
        source_ids = torch.tensor(sources)
        for target in chosen:
            row = graph.storage_row(target)
            if row is None:
                continue
            values = graph.adjacency[row, source_ids]
            for k in torch.nonzero(values, as_tuple=True)[0].tolist():
                links.append({"source": graph.node_id(sources[k]), "target": graph.node_id(target),
                              "weight": float(values[k])})
        return links
