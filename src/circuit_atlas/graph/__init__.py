"""Attribution graphs: the `Graph` object and its files, influence and pruning, replacement /
completeness scores, export to the frontend / Neuronpedia JSON format, and precomputed attention
explanations stored beside a graph."""

from circuit_atlas.graph.attention import GraphAttention, explain_graph_attention
from circuit_atlas.graph.export import (
    cantor_pair,
    cantor_unpair,
    read_graph_json,
    to_graph_json,
    update_graph_metadata,
    write_graph_json,
)
from circuit_atlas.graph.graph import Graph, GraphFileError
from circuit_atlas.graph.prune import (
    PrunedGraph,
    compute_influence,
    cumulative_scores,
    find_threshold,
    node_influence,
    normalize_matrix,
    prune,
)
from circuit_atlas.graph.scores import GraphScores, graph_scores
from circuit_atlas.graph.synthetic import random_graph

__all__ = [
    "Graph",
    "GraphAttention",
    "GraphFileError",
    "GraphScores",
    "PrunedGraph",
    "cantor_pair",
    "cantor_unpair",
    "compute_influence",
    "cumulative_scores",
    "explain_graph_attention",
    "find_threshold",
    "graph_scores",
    "node_influence",
    "normalize_matrix",
    "prune",
    "random_graph",
    "read_graph_json",
    "to_graph_json",
    "update_graph_metadata",
    "write_graph_json",
]
