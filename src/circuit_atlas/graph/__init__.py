"""Attribution graphs: the `Graph` object and its files, influence and pruning, replacement /
completeness scores, export to the frontend / Neuronpedia JSON format (`docs/graph-json.md`),
precomputed attention explanations stored beside a graph, and graph bundles (the folders `trace`
writes and the explorer serves)."""

from circuit_atlas.errors import GraphFileError
from circuit_atlas.graph.attention import GraphAttention
from circuit_atlas.graph.bundle import read_bundle_info, read_feature_labels, write_graph_bundle
from circuit_atlas.graph.aggregate import GraphAggregate, aggregate_graphs
from circuit_atlas.graph.compare import GraphComparison, compare_graphs
from circuit_atlas.graph.export import (
    read_graph_json,
    save_graph_json,
    to_graph_json,
    update_graph_metadata,
    write_graph_json,
)
from circuit_atlas.graph.graph import Graph
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
from circuit_atlas.graph.synthetic import random_graph, synthetic_graph_json
from circuit_atlas.io.cantor import cantor_pair, cantor_unpair

__all__ = [
    "Graph",
    "GraphAttention",
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
    "read_bundle_info",
    "read_feature_labels",
    "read_graph_json",
    "save_graph_json",
    "synthetic_graph_json",
    "to_graph_json",
    "update_graph_metadata",
    "write_graph_bundle",
    "write_graph_json",
]
