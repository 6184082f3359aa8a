"""Attribution graphs: the `Graph` object and its files, influence and pruning, replacement /
completeness scores, and export to the frontend / Neuronpedia JSON format."""

from circuit_atlas.graph.aggregate import GraphAggregate, aggregate_graphs
from circuit_atlas.graph.compare import GraphComparison, compare_graphs
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
    "GraphFileError",
    "GraphAggregate",
    "GraphComparison",
    "GraphScores",
    "PrunedGraph",
    "aggregate_graphs",
    "cantor_pair",
    "cantor_unpair",
    "compare_graphs",
    "compute_influence",
    "cumulative_scores",
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
