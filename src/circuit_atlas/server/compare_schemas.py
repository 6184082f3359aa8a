"""Response models of the analysis endpoints (`server/compare.py`): a comparison of two graphs and
a graph's supernode suggestions, field for field as docs/graph-comparison.md describes them.

They extend `schemas.ResponseBody` (declared fields checked, NaN refused), so `/openapi.json`
documents them and tests/server/test_contract.py checks every answer against them.
"""

from __future__ import annotations

from typing import Any, Literal

from circuit_atlas.server.schemas import ResponseBody

Status = Literal["both", "only a", "only b"]


class ComparedGraph(ResponseBody):
    prompt: str
    tokens: list[str]
    model: str
    replacement: float
    completeness: float
    n_feature_nodes: int
    n_kept_features: int


class AlignedPosition(ResponseBody):
    key: str
    role: str
    a: int | None
    b: int | None
    token_a: str | None
    token_b: str | None


class AlignedLogit(AlignedPosition):
    probability_a: float | None
    probability_b: float | None
    node_id_a: str | None
    node_id_b: str | None


class NodeDiff(ResponseBody):
    key: str
    kind: Literal["feature", "error", "token", "logit"]
    layer: int | None
    feature: int | None
    position: str
    status: Status
    node_id_a: str | None
    node_id_b: str | None
    influence_a: float
    influence_b: float
    delta: float
    activation_a: float | None
    activation_b: float | None
    active_a: bool
    active_b: bool
    label: str


class EdgeDiff(ResponseBody):
    source: str
    target: str
    status: Status
    weight_a: float
    weight_b: float
    influence_a: float
    influence_b: float
    delta: float


class TargetChange(ResponseBody):
    key: str
    token_a: str | None
    token_b: str | None
    probability_a: float | None
    probability_b: float | None
    same_token: bool
    strengthened: list[str]
    weakened: list[str]


class Comparison(ResponseBody):
    """`compare_graphs(a, b).to_json()` plus the ids of the two graphs."""

    format: Literal["circuit-atlas-graph-comparison"]
    version: int
    graph_a: str
    graph_b: str
    a: ComparedGraph
    b: ComparedGraph
    positions: list[AlignedPosition]
    logits: list[AlignedLogit]
    nodes: list[NodeDiff]
    edges: list[EdgeDiff]
    target: TargetChange
    summary: dict[str, int | float]  # counts, and shares in [0, 1]
    settings: dict[str, float]


class SuggestedGroup(ResponseBody):
    name: str
    members: list[str]
    features: list[list[int]]
    labels: list[str]
    cohesion: float
    evidence: dict[str, float]
    influence: float


class SupernodeSuggestions(ResponseBody):
    """`suggest_supernodes(graph, features=store).to_json()` plus the graph id and whether the
    served feature store took part."""

    format: Literal["circuit-atlas-supernode-suggestions"]
    version: int
    graph_id: str
    feature_store: bool
    groups: list[SuggestedGroup]
    candidates: list[str]
    evidence_used: list[str]
    settings: dict[str, Any]
