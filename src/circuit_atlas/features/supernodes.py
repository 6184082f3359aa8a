"""Suggested supernodes: groups of a graph's features that mean and do the same thing.

`suggest_supernodes(graph, features=store)` scores every pair of candidate feature nodes (by
default the features the pruned graph keeps, i.e. what the explorer draws) on up to three kinds
of evidence, each a similarity in [-1, 1] or [0, 1]:

* **decoder**: the cosine of the two features' decoder directions (summed over the layers a
  cross-layer feature writes to), when `transcoders` are given; otherwise the cosine of their
  logit effects as the store keeps them (the top and bottom output tokens of each decoder
  direction, other tokens counted as 0). Features that write the same thing agree here.
* **co-activation**: of the corpus tokens the rarer of the two features fires on, the share on
  which the other fires too (the overlap coefficient |A∩B| / min(|A|, |B|)). It is estimated
  from the store alone: a store's samples are bottom-k sketches under one hash of the occurrence
  (`keys.py`), so the k smallest keys of the union of two samples are a uniform sample of the
  union of the two sets, and the share of them found in both samples estimates the Jaccard index
  J (standard error about sqrt(J(1-J)/k)); with the exact counts |A| and |B| of the store, J
  gives |A∩B| = J/(1+J)·(|A|+|B|). Features that never fire together are alternatives (texas
  or georgia), not parts of one supernode, and this is the evidence that tells them apart.
* **graph**: the cosine of the two nodes' input edges (their rows of the adjacency) and of their
  output edges (their columns), averaged: features fed by the same nodes and feeding the same
  nodes play the same role in this graph.

The similarity of a pair is the weighted mean of the evidence available (`weights`, equal by
default), and
features are grouped by average-linkage clustering: the two groups whose mean pairwise
similarity is highest merge, until no two groups reach `min_similarity`. Groups of one are not
suggested. Each group is named from its members' labels: the label text (before any
parenthesis) that carries most of the group's influence, and the runner-up when it carries
nearly as much.

The result (`SupernodeSuggestions.to_json()`) is plain JSON: every group lists its members as
graph-JSON node ids (`layer_feature_position`), so the explorer can offer them as supernodes
(`as_qparams()` gives the `qParams.supernodes` form: `[name, node_id, ...]`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.features.logits import decoder_directions
from circuit_atlas.graph import Graph, node_influence, prune

DEFAULT_WEIGHTS = {"decoder": 1.0, "coactivation": 1.0, "graph": 1.0}
DEFAULT_MIN_SIMILARITY = 0.6
NAME_RUNNER_UP = 0.6  # a second label joins the name when it carries this share of the first's


@dataclass(frozen=True)
class SuggestedSupernode:
    """One suggested group: its name, members and how strongly the evidence ties them."""

    name: str
    members: list[str]  # graph-JSON node ids, most influential first
    features: list[tuple[int, int, int]]  # (layer, position, feature) of each member
    labels: list[str]  # each member's label ("" when unlabelled)
    cohesion: float  # mean pairwise similarity inside the group
    evidence: dict[str, float]  # mean pairwise similarity per kind of evidence
    influence: float  # summed influence of the members on the targets


@dataclass(frozen=True)
class SupernodeSuggestions:
    """The result of `suggest_supernodes`."""

    groups: list[SuggestedSupernode]
    candidates: list[str]  # node ids considered
    evidence_used: list[str]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"format": "circuit-atlas-supernode-suggestions", "version": 1, **asdict(self)}

    def as_qparams(self) -> list[list[str]]:
        """The groups in graph-JSON `qParams.supernodes` form: `[name, node_id, ...]`."""
        return [[g.name, *g.members] for g in self.groups]


def suggest_supernodes(graph: Graph, features=None, *, transcoders=None,
                       nodes: Sequence[str] | None = None, node_threshold: float = 0.8,
                       edge_threshold: float = 0.98, min_similarity: float = DEFAULT_MIN_SIMILARITY,
                       weights: Mapping[str, float] | None = None,
                       labels: Mapping[tuple[int, int], str] | None = None) -> SupernodeSuggestions:
    """Group the feature nodes of `graph` (see the module docstring).

    `features`: a `FeatureStore` (co-activation, logit effects, labels); `transcoders`: the
    graph's transcoders (decoder cosines); `nodes`: the node ids to group (default: the feature
    nodes `prune(graph, node_threshold, edge_threshold)` keeps); `weights`: per kind of evidence
    ("decoder", "coactivation", "graph"); `labels`: (layer, feature) -> label, over the store's.
    """
    weights = {**DEFAULT_WEIGHTS, **(weights or {})}
    candidates = _candidates(graph, nodes, node_threshold, edge_threshold)
    coords = [tuple(int(v) for v in graph.feature_coords[i]) for i in candidates]
    evidence = {}
    decoder = _decoder_similarity(coords, transcoders, features)
    if decoder is not None:
        evidence["decoder"] = decoder
    if features is not None and features.has_occurrence_sketches:
        evidence["coactivation"] = _coactivation(coords, features)
    if graph.n_selected:
        evidence["graph"] = _graph_similarity(graph, candidates)
    evidence = {k: v for k, v in evidence.items() if weights.get(k, 0) > 0}
    if not evidence:
        raise CircuitAtlasError("suggest_supernodes has no evidence to use: every weight is 0")
    similarity = sum(weights[k] * v for k, v in evidence.items()) / sum(weights[k] for k in evidence)
    influence = node_influence(graph)[candidates].tolist() if candidates else []
    all_labels = {**(features.labels() if features is not None else {}), **(labels or {})}
    groups = [_group(graph, members, candidates, coords, similarity, evidence, influence, all_labels)
              for members in average_linkage(similarity, min_similarity) if len(members) > 1]
    groups.sort(key=lambda g: -g.influence)
    return SupernodeSuggestions(
        groups=groups, candidates=[graph.node_id(i) for i in candidates],
        evidence_used=sorted(evidence),
        settings={"min_similarity": min_similarity, "weights": weights,
                  "node_threshold": node_threshold, "edge_threshold": edge_threshold,
                  "decoder_source": "transcoders" if transcoders is not None else "logit effects"})


# ---------------------------------------------------------------------- candidates
def _candidates(graph: Graph, nodes, node_threshold: float, edge_threshold: float) -> list[int]:
    if nodes is None:
        kept = prune(graph, node_threshold, edge_threshold).node_mask[:graph.n_selected]
        return torch.nonzero(kept).flatten().tolist()
    out = []
    for node_id in nodes:
        try:
            index = graph.node_index(node_id)
        except KeyError:
            raise CircuitAtlasError(f"suggest_supernodes: no node {node_id!r} in the graph") from None
        if graph.node_kind(index) != "feature":
            raise CircuitAtlasError(f"suggest_supernodes groups feature nodes; {node_id!r} is a "
                                    f"{graph.node_kind(index)} node")
        out.append(index)
    return sorted(set(out))


# ---------------------------------------------------------------------- evidence
def _cosine_matrix(vectors: torch.Tensor) -> torch.Tensor:
    vectors = vectors.double()
    norms = vectors.norm(dim=1, keepdim=True).clamp(min=1e-12)
    unit = vectors / norms
    return (unit @ unit.T).clamp(-1, 1)


def _decoder_similarity(coords, transcoders, store) -> torch.Tensor | None:
    if transcoders is not None:
        vectors = torch.stack([decoder_directions(transcoders, layer, torch.tensor([feature]))[0].cpu()
                               for layer, _, feature in coords]) if coords else torch.zeros(0, 1)
        return _cosine_matrix(vectors)
    if store is None:
        return None
    effects = []
    for layer, _, feature in coords:
        card_effects = store.logit_effects(layer, feature)
        effects.append(card_effects)
    vocab = sorted({i for e in effects for i in e})
    column = {token: j for j, token in enumerate(vocab)}
    vectors = torch.zeros(len(coords), max(len(vocab), 1), dtype=torch.float64)
    for row, e in enumerate(effects):
        for token, value in e.items():
            vectors[row, column[token]] = value
    return _cosine_matrix(vectors)


def sketch_jaccard(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Jaccard index of two sets from their bottom-k sketches (ascending key arrays)."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    union = np.union1d(a, b)[:k]
    both = np.intersect1d(np.intersect1d(union, a, assume_unique=True), b, assume_unique=True)
    return len(both) / len(union)


def coactivation(jaccard: float, count_a: int, count_b: int) -> float:
    """The share of the rarer feature's tokens on which the other fires too (the overlap
    coefficient |A∩B| / min(|A|, |B|)), from the Jaccard index and the exact counts: unlike the
    Jaccard index it stays high when a rare feature fires inside a common one."""
    if min(count_a, count_b) <= 0:
        return 0.0
    both = jaccard / (1.0 + jaccard) * (count_a + count_b)
    return min(1.0, both / min(count_a, count_b))


def _coactivation(coords, store) -> torch.Tensor:
    sketches = [store.sample_keys(layer, feature) for layer, _, feature in coords]
    counts = [store.activation_count(layer, feature) for layer, _, feature in coords]
    n, k = len(coords), store.n_samples
    out = torch.eye(n, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            jaccard = sketch_jaccard(sketches[i], sketches[j], k)
            out[i, j] = out[j, i] = coactivation(jaccard, counts[i], counts[j])
    return out


def _graph_similarity(graph: Graph, candidates: list[int]) -> torch.Tensor:
    rows = graph.adjacency[candidates].double()  # inputs: what feeds each node
    columns = graph.adjacency[:, candidates].T.double()  # outputs: what each node feeds
    return (_cosine_matrix(rows) + _cosine_matrix(columns)) / 2


# ---------------------------------------------------------------------- clustering and names
def average_linkage(similarity: torch.Tensor, threshold: float) -> list[list[int]]:
    """Groups (index lists) from average-linkage clustering of a symmetric similarity matrix:
    merge the two groups of highest mean pairwise similarity while it is at least `threshold`.
    Ties merge the pair with the smallest indices, so the result is deterministic."""
    n = similarity.shape[0]
    groups: dict[int, list[int]] = {i: [i] for i in range(n)}
    sums = similarity.double().clone()  # sums[a, b]: total similarity between groups a and b
    sums.fill_diagonal_(-math.inf)
    active = list(range(n))
    while len(active) > 1:
        ids = torch.tensor(active)
        sizes = torch.tensor([len(groups[g]) for g in active], dtype=torch.float64)
        mean = sums[ids][:, ids] / (sizes[:, None] * sizes[None])
        best = float(mean.max())
        if best < threshold or math.isinf(best):
            break
        flat = int(torch.argmax(mean))
        a, b = sorted((active[flat // len(active)], active[flat % len(active)]))
        groups[a] += groups.pop(b)
        sums[a] += sums[b]
        sums[:, a] += sums[:, b]
        sums[a, a] = -math.inf
        active.remove(b)
    return [sorted(groups[g]) for g in sorted(groups)]


def _label_head(label: str) -> str:
    return label.split(" (")[0].strip()


def group_name(labels: list[str], influence: list[float], fallback: str) -> str:
    """The label head carrying most influence (and the runner-up when close), or `fallback`."""
    weight: dict[str, float] = defaultdict(float)
    for label, value in zip(labels, influence):
        if label:
            weight[_label_head(label)] += max(value, 0.0) + 1e-9
    if not weight:
        return fallback
    ranked = sorted(weight.items(), key=lambda kv: (-kv[1], kv[0]))
    if len(ranked) > 1 and ranked[1][1] >= NAME_RUNNER_UP * ranked[0][1]:
        return f"{ranked[0][0]} / {ranked[1][0]}"
    return ranked[0][0]


def _group(graph: Graph, members: list[int], candidates: list[int], coords, similarity,
           evidence, influence, labels) -> SuggestedSupernode:
    order = sorted(members, key=lambda m: -influence[m])
    member_labels = [labels.get((coords[m][0], coords[m][2]), "") for m in order]
    pairs = [(i, j) for x, i in enumerate(order) for j in order[x + 1:]]
    mean = lambda matrix: float(sum(matrix[i, j] for i, j in pairs) / len(pairs))  # noqa: E731
    layers = sorted({coords[m][0] for m in order})
    positions = sorted({coords[m][1] for m in order})
    fallback = (f"L{'/'.join(map(str, layers))} features at "
                + ", ".join(repr(graph.tokens[p]) for p in positions))
    return SuggestedSupernode(
        name=group_name(member_labels, [influence[m] for m in order], fallback),
        members=[graph.node_id(candidates[m]) for m in order],
        features=[coords[m] for m in order], labels=member_labels,
        cohesion=mean(similarity), evidence={k: mean(v) for k, v in evidence.items()},
        influence=float(sum(influence[m] for m in order)))
