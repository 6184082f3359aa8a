"""Everything the server asks of a native `Graph`, in one place.

Keeping the graph package's API behind these few functions means the web API's shapes stay put
if that package changes, and the JSON-only code path can mirror them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from circuit_atlas.errors import CircuitAtlasError


def load_native(path: Path) -> Any:
    """`Graph.load`, with file problems surfaced as the package's own error type."""
    from circuit_atlas.graph import Graph

    return Graph.load(path)


def native_metadata(graph: Any) -> dict[str, Any]:
    """The graph-list fields (graph-json.md §3) of a native graph."""
    scan = graph.transcoder_scan
    return {
        "prompt": graph.prompt,
        "prompt_tokens": list(graph.tokens),
        "scan": scan if isinstance(scan, str) or scan is None else "custom",
    }


def native_view(graph: Any, slug: str, node_threshold: float, edge_threshold: float) -> dict:
    """The pruned graph JSON at the given thresholds (the graph package prunes)."""
    from circuit_atlas.graph import to_graph_json

    return to_graph_json(graph, slug, node_threshold, edge_threshold)


def node_record(graph: Any, index: int) -> dict[str, Any]:
    """A graph-json §5 node dict for dense index ``index`` (no influence: not pruned here)."""
    from circuit_atlas.graph.export import FEATURE_TYPES, cantor_pair

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
        record.update(
            layer=str(layer),
            ctx_idx=pos,
            feature=cantor_pair(layer, feat),
            activation=float(graph.selected_activations[index]),
        )
    elif kind == "error":
        layer, pos = divmod(index - graph.n_selected, graph.n_positions)
        record.update(layer=str(layer), ctx_idx=pos, feature=-1)
    elif kind == "token":
        pos = index - graph.token_range.start
        record.update(layer="E", ctx_idx=pos, feature=pos)
    else:
        i = index - graph.n_sources
        prob = float(graph.logit_probabilities[i])
        record.update(
            layer=str(graph.n_layers + 1),
            ctx_idx=graph.n_positions - 1,
            feature=int(graph.logit_token_ids[i]),
            clerp=f'Output "{graph.logit_tokens[i]}" (p={prob:.3f})',
            token_prob=prob,
        )
    return record


def node_index(graph: Any, node_id: str) -> int | None:
    try:
        return graph.node_index(node_id)
    except KeyError:
        return None


def full_edges(graph: Any, index: int) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """All non-zero (other node, weight) pairs into and out of dense node ``index``.

    Incoming weights are the node's storage row; outgoing ones its storage column (only
    features, errors and tokens have columns).
    """
    import torch

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


def induced_links(graph: Any, indices: Sequence[int]) -> list[dict[str, Any]]:
    """Every non-zero edge of the unpruned graph whose both ends are in ``indices``."""
    import torch

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
            links.append(
                {
                    "source": graph.node_id(sources[k]),
                    "target": graph.node_id(target),
                    "weight": float(values[k]),
                }
            )
    return links


def subgraph_scores(graph: Any, node_ids: Sequence[str] | None) -> dict[str, Any]:
    """Replacement and completeness of the whole graph or of a pinned subgraph."""
    from circuit_atlas.graph import graph_scores

    if node_ids is None:
        scores = graph_scores(graph)
    else:
        indices = []
        unknown = []
        for node_id in node_ids:
            idx = node_index(graph, node_id)
            (unknown if idx is None else indices).append(node_id if idx is None else idx)
        if unknown:
            raise CircuitAtlasError(f"unknown node ids for this graph: {unknown[:10]}")
        scores = graph_scores(graph, subgraph=indices)
    return {
        "replacement": float(scores.replacement),
        "completeness": float(scores.completeness),
    }

