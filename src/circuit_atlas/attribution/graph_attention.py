"""Precomputing the attention explanations of a pruned graph (stored by `graph.attention`).

For the strongest kept edges between positions, each edge is split over the heads that carry it
(`heads.py`) and each of its strongest heads gets a QK explanation (`qk.py`) of why it attends
where it does. It lives at the attribution layer because it needs the model; the stored format
(`GraphAttention`) is the graph layer's.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from circuit_atlas.attribution.heads import HeadAttributor
from circuit_atlas.attribution.qk import QKAttribution, QKExplainer
from circuit_atlas.graph.attention import (
    FULL_VALUES_LIMIT,
    GraphAttention,
    StoredExplanation,
    strongest_cross_position_edges,
)
from circuit_atlas.graph.graph import Graph, GraphFileError
from circuit_atlas.graph.prune import PrunedGraph, prune


def stored_explanation(qk: QKAttribution, top_pairs: int) -> StoredExplanation:
    """The stored form of one QK explanation: scalars, terms, totals and the strongest pairs."""
    n_q, n_k = qk.values.shape
    order = torch.argsort(qk.values.abs().reshape(-1), descending=True, stable=True)[:top_pairs]
    index = torch.stack([order // n_k, order % n_k], 1)
    meta = {key: getattr(qk, key) for key in (
        "layer", "head", "query_position", "key_position", "query_token", "key_token", "score",
        "logit", "softcap", "scaling", "attention_weight")}
    meta["unexplained"] = qk.unexplained
    return StoredExplanation(
        meta=meta, query_terms=[t.to_json() for t in qk.query_terms],
        key_terms=[t.to_json() for t in qk.key_terms],
        query_totals=qk.values.sum(1), key_totals=qk.values.sum(0), pair_index=index,
        pair_value=qk.values.reshape(-1)[order], pair_weight_effect=qk.weight_effects.reshape(-1)[order],
        values=qk.values.clone() if n_q * n_k <= FULL_VALUES_LIMIT else None,
    )


def explain_graph_attention(
    model,
    graph: Graph,
    *,
    pruned: PrunedGraph | None = None,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    max_edges: int = 10,
    heads_per_edge: int = 3,
    top_pairs: int = 50,
    hop: str = "last",
    progress: bool = True,
    attributor: HeadAttributor | None = None,
    explainer: QKExplainer | None = None,
) -> GraphAttention:
    """Explain the attention behind the `max_edges` strongest cross-position edges of the pruned
    graph: each edge's head table, and a QK explanation for its `heads_per_edge` strongest heads
    at the pattern entry that carries most of each (`top_pairs` pairs kept per explanation).
    `attributor` / `explainer` reuse ones already built for this graph and model."""
    if pruned is None:
        pruned = prune(graph, node_threshold, edge_threshold)
    elif pruned.graph is not graph:
        raise GraphFileError("explain_graph_attention: `pruned` was computed for another graph")
    for name, value in (("max_edges", max_edges), ("heads_per_edge", heads_per_edge), ("top_pairs", top_pairs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise GraphFileError(f"{name} must be a positive integer, got {value!r}")
    explainer = explainer or QKExplainer(model, graph.input_ids)
    attributor = attributor or HeadAttributor(model, graph, run=explainer.run)
    edges, explanations, index_of = [], [], {}
    chosen = strongest_cross_position_edges(graph, pruned, max_edges)
    for source, target, _ in tqdm(chosen, desc="attention explanations", unit="edge",
                                  disable=not progress, leave=False):
        heads = attributor.edge_heads(graph.node_id(source), graph.node_id(target), hop=hop)
        record = heads.to_json(top=heads_per_edge)
        for row in record["heads"]:
            key = (row["layer"], row["head"], row["query_position"], row["key_position"])
            if key not in index_of:
                index_of[key] = len(explanations)
                explanations.append(stored_explanation(explainer.explain(*key), top_pairs))
            row["explanation"] = index_of[key]
        edges.append(record)
    settings = {"node_threshold": pruned.node_threshold, "edge_threshold": pruned.edge_threshold,
                "max_edges": max_edges, "heads_per_edge": heads_per_edge, "top_pairs": top_pairs}
    return GraphAttention(model_name=graph.model_name, prompt_tokens=list(graph.tokens), hop=hop,
                          settings=settings, edges=edges, explanations=explanations)
