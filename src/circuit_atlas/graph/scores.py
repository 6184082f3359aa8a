"""Replacement and completeness scores (`docs/algorithm.md` §11), for the whole graph or
for a chosen subgraph.

Whole graph, with `Â = normalize(A)`, `I = influence(Â, w)`, errors ℰ and tokens 𝒯::

    replacement  = Σ_{s∈𝒯} I[s] / (Σ_{s∈𝒯} I[s] + Σ_{s∈ℰ} I[s])
    nonerr[t]    = 1 − Σ_{s∈ℰ} Â[t, s]            (1 for rows without inputs)
    completeness = Σ_t nonerr[t]·(I[t] + w[t]) / Σ_t (I[t] + w[t])

Replacement: how much of the (normalised, multi-hop) influence on the logits starts at the
tokens rather than at error nodes. Completeness: the influence-weighted share of node inputs that
come from non-error nodes.

Subgraph. Choosing feature nodes K means explaining the logits with K alone: every feature node
not in K is merged into the error nodes. Concretely, each unchosen feature `u`

1. loses its inputs (its row of A is zeroed, as for an error node), so influence can no longer
   pass *through* it to the tokens or to other features, and
2. joins the error set: ℰ' = ℰ ∪ {unchosen features}; its outgoing edges count as error input.

The §11 formulas are then evaluated unchanged on this modified graph, with ℰ' for ℰ. Error,
token and logit nodes are part of every subgraph. Choosing all features gives exactly the
whole-graph scores; choosing none gives the scores of a graph whose features are all errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Union

import torch

from circuit_atlas.errors import AttributionError
from circuit_atlas.graph.graph import Graph
from circuit_atlas.graph.prune import PrunedGraph, _normalize_abs_, storage_influence

Subgraph = Union[PrunedGraph, torch.Tensor, Iterable[Union[int, str]]]


@dataclass(frozen=True)
class GraphScores:
    """Replacement and completeness scores, both in [0, 1]."""

    replacement: float
    completeness: float


def graph_scores(graph: Graph, subgraph: Subgraph | None = None) -> GraphScores:
    """Scores of the unpruned graph, or of a subgraph (see the module docstring).

    `subgraph`: a `PrunedGraph` (its kept nodes), a bool mask over the N dense nodes, or an
    iterable of dense node indices and/or node ids. Only its feature nodes matter.
    """
    chosen = _chosen_features(graph, subgraph)
    n_sel = graph.n_selected
    normalized = graph.adjacency.abs()
    if chosen is not None:
        normalized[:n_sel][~chosen] = 0
    _normalize_abs_(normalized)
    influence = storage_influence(graph, normalized)

    error_columns = torch.zeros(graph.n_sources, dtype=torch.bool)
    error_columns[graph.error_range.start : graph.error_range.stop] = True
    if chosen is not None:
        error_columns[:n_sel] = ~chosen
    return GraphScores(
        replacement=_replacement(graph, influence, error_columns),
        completeness=_completeness(graph, normalized, influence, error_columns),
    )


def _replacement(graph: Graph, influence: torch.Tensor, error_columns: torch.Tensor) -> float:
    token_part = float(influence[graph.token_range.start : graph.n_sources].sum(dtype=torch.float64))
    error_part = float(influence[: graph.n_sources][error_columns].sum(dtype=torch.float64))
    total = token_part + error_part
    return token_part / total if total > 0 else 0.0


def _completeness(
    graph: Graph, normalized: torch.Tensor, influence: torch.Tensor, error_columns: torch.Tensor
) -> float:
    weight = (influence + graph.logit_weights).to(torch.float64)
    nonerr = torch.ones(graph.n_nodes, dtype=torch.float64)
    error_share = normalized[:, error_columns].sum(dim=1, dtype=torch.float64)
    nonerr[graph.dense_rows] = 1.0 - error_share
    total = float(weight.sum())
    return float((nonerr * weight).sum()) / total if total > 0 else 0.0


def _chosen_features(graph: Graph, subgraph: Subgraph | None) -> torch.Tensor | None:
    """bool [n_sel]: which feature nodes the subgraph contains (None: the whole graph)."""
    if subgraph is None:
        return None
    if isinstance(subgraph, PrunedGraph):
        if subgraph.graph is not graph:
            raise AttributionError("graph_scores: the PrunedGraph was made from another graph")
        subgraph = subgraph.node_mask
    if isinstance(subgraph, torch.Tensor) and subgraph.dtype == torch.bool:
        if tuple(subgraph.shape) != (graph.n_nodes,):
            raise AttributionError(
                f"graph_scores: a subgraph mask must have shape [{graph.n_nodes}] (all nodes), "
                f"got {list(subgraph.shape)}"
            )
        return subgraph[: graph.n_selected].clone()
    if isinstance(subgraph, torch.Tensor):
        subgraph = subgraph.flatten().tolist()
    chosen = torch.zeros(graph.n_selected, dtype=torch.bool)
    for node in subgraph:
        index = _resolve_node(graph, node)
        if index < graph.n_selected:
            chosen[index] = True
    return chosen


def _resolve_node(graph: Graph, node: int | str) -> int:
    if isinstance(node, str):
        try:
            return graph.node_index(node)
        except KeyError:
            raise AttributionError(f"graph_scores: subgraph names unknown node id {node!r}") from None
    if isinstance(node, bool) or not isinstance(node, int):
        raise AttributionError(
            f"graph_scores: subgraph nodes must be node ids or indices, got {node!r}"
        )
    if not 0 <= node < graph.n_nodes:
        raise AttributionError(
            f"graph_scores: subgraph node index {node} is outside 0..{graph.n_nodes - 1}"
        )
    return node
