"""Node influence and graph pruning, exactly as defined in `docs/algorithm.md` §10.

Definitions (N nodes in dense order, `A[t, s]` = direct effect of source s on target t):

- `normalize(A) = |A| / max(rowsum(|A|), 1e-10)` row-wise;
- logit weights `w`: the logit probabilities on logit nodes, 0 elsewhere;
- `influence(Â, w) = w·Â + w·Â² + …` (the start `w` excluded), iterated until the term is
  exactly zero, which happens after at most depth-of-the-DAG steps;
- `find_threshold(scores, τ)`: the smallest top set whose share of the total reaches τ, plus
  ties; everything `≥` the returned value is kept.

`prune` runs the three steps of the definition: node threshold on influence (tokens and logits
always kept), edge threshold on `Â'[t,s]·(I'[t] + w[t])` of the node-pruned graph, then clean-up
passes until every kept feature has kept input and output edges and every kept error has a kept
output edge.

For τ < 1 on a graph with some positive score the masks are circuit-tracer's, up to float
rounding at exact ties. Deliberate differences from circuit-tracer's float32 code: cumulative
shares are summed in float64, and zero scores are never kept. circuit-tracer keeps every zero
entry whenever rounding leaves its float32 cumulative share just short of τ = 1; here `τ = 1`
keeps exactly the nodes/edges with positive scores, i.e. everything on a path to the logits.

Memory. Everything works on the stored rectangle `R×C = [n_sel + n_logits, n_sel + (L+1)·P]`
instead of the square N×N matrix, and no N×N float32 is ever built. `prune` holds one float32
rectangle (|A|, normalised, then turned into edge scores in place), the bool edge mask it
returns (R·C bytes) and row-block temporaries (~4M entries), so its peak is about 5·R·C bytes
beyond the graph. The edge threshold is found without a sorted copy (`find_matrix_threshold`).
The dense bool edge mask (N² bytes) is only built when `PrunedGraph.edge_mask` is read.
Measured (random_graph, n_sel=9000, L=20, P=30, N=9640; one CPU thread on a shared 2-core
machine): stored rectangle 331 MiB, `prune` peak extra RSS 443 MiB in ~4 s, `graph_scores`
372 MiB in ~1 s, `to_graph_json` of the pruned result (3.2k nodes, 430k links) 0.6 s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from circuit_atlas.errors import AttributionError
from circuit_atlas.graph.graph import Graph
from circuit_atlas.io.checks import check_threshold

NORM_EPS = 1e-10
MAX_INFLUENCE_ITERATIONS = 1000
_BLOCK_ELEMENTS = 1 << 22  # row-block size (elements) for chunked reductions over the rectangle


# ---------------------------------------------------------------------- the definitions


def normalize_matrix(matrix: torch.Tensor) -> torch.Tensor:
    """`|A|` divided row-wise by `max(rowsum(|A|), 1e-10)` (a new tensor)."""
    normalized = matrix.abs()
    return _normalize_abs_(normalized)


def _normalize_abs_(abs_matrix: torch.Tensor) -> torch.Tensor:
    """In-place row normalisation of a non-negative matrix."""
    row_sums = abs_matrix.sum(dim=1, keepdim=True).clamp_(min=NORM_EPS)
    return abs_matrix.div_(row_sums)


def compute_influence(
    normalized_adjacency: torch.Tensor,
    logit_weights: torch.Tensor,
    max_iter: int = MAX_INFLUENCE_ITERATIONS,
) -> torch.Tensor:
    """`w·Â + w·Â² + …` on a square normalised matrix (the definition, `docs/algorithm.md` §10).

    Raises AttributionError when the series has not ended after `max_iter` terms, which means
    the adjacency has a cycle (attribution graphs are DAGs).
    """
    current = logit_weights @ normalized_adjacency
    influence = current.clone()
    iterations = 0
    while bool(current.any()):
        if iterations >= max_iter:
            raise AttributionError(
                f"influence did not converge in {max_iter} iterations: the adjacency has a cycle"
            )
        current = current @ normalized_adjacency
        influence += current
        iterations += 1
    return influence


def find_threshold(scores: torch.Tensor, threshold: float) -> float:
    """Score value above which the top nodes/edges hold a `threshold` share of the total.

    Sort descending, let `i*` be the first index whose cumulative share is `≥ threshold`, and
    return `sorted[i*]`. Shares are summed in float64. `threshold == 1` returns the smallest
    positive score; an all-zero input returns `inf` (nothing is kept).
    """
    threshold = check_threshold(threshold, "threshold")
    values = torch.sort(scores.detach().flatten().to(torch.float64), descending=True).values
    n_positive = int((values > 0).sum())
    if n_positive == 0:
        return float("inf")
    values = values[:n_positive]
    if threshold >= 1.0:
        return float(values[-1])
    cumulative = torch.cumsum(values, dim=0)
    index = int(torch.searchsorted(cumulative, threshold * float(cumulative[-1])))
    return float(values[min(index, n_positive - 1)])


# ---------------------------------------------------------------------- on the stored rectangle
def _row_blocks(n_rows: int, n_cols: int):
    step = max(1, _BLOCK_ELEMENTS // max(n_cols, 1))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def storage_influence(graph: Graph, normalized: torch.Tensor) -> torch.Tensor:
    """Influence (`docs/algorithm.md` §10) of every dense node, from the normalised stored rectangle.

    Only feature rows propagate influence further (error and token rows are zero; logits have
    no outputs), so after the first step `q` lives on the feature columns alone.
    Returns float32 [N]; logit nodes get 0 (nothing flows out of them).
    """
    n_sel = graph.n_selected
    current = graph.logit_probabilities @ normalized[n_sel:]
    influence = current.clone()
    feature_rows = normalized[:n_sel]
    iterations = 0
    while n_sel and bool(current[:n_sel].any()):
        if iterations >= MAX_INFLUENCE_ITERATIONS:
            raise AttributionError(
                "influence did not converge: the graph's feature-to-feature edges form a cycle"
            )
        current = current[:n_sel] @ feature_rows
        influence += current
        iterations += 1
    return torch.cat([influence, torch.zeros(graph.n_logits, dtype=influence.dtype)])


def node_influence(graph: Graph) -> torch.Tensor:
    """Raw influence of every node on the unpruned graph (float32 [N], dense order)."""
    return storage_influence(graph, normalize_matrix(graph.adjacency))


def cumulative_scores(influence: torch.Tensor) -> torch.Tensor:
    """`docs/algorithm.md` §10 step 4: each node's share of the total influence of nodes ranked at or
    above it (descending, stable sort). Smaller is more important; zero influence gives 1."""
    values = influence.detach().to(torch.float64)
    order = torch.sort(values, descending=True, stable=True).indices
    cumulative = torch.cumsum(values[order], dim=0)
    total = float(cumulative[-1]) if cumulative.numel() else 0.0
    scores = torch.ones_like(values)
    if total > 0:
        scores[order] = cumulative / total
    return scores.to(torch.float32)


def _min_positive(scores: torch.Tensor) -> float:
    smallest = float("inf")
    for rows in _row_blocks(*scores.shape):
        block = scores[rows]
        if block.numel():
            smallest = min(smallest, float(torch.where(block > 0, block, float("inf")).min()))
    return smallest


def _float_bits(value: float) -> int:
    return int(np.float32(value).view(np.int32))


def _bits_float(bits: int) -> float:
    return float(np.int32(bits).view(np.float32))


def _bucket_masses(scores: torch.Tensor, low: int, shift: int, count: int) -> torch.Tensor:
    """float64 [count]: `Σ_{s ≥ b_k} s` for the boundaries `b_k` whose float32 bit patterns are
    `low + k·2^shift`, in one pass (integer bucketing of the bit patterns + weighted bincount).
    Entries below `b_0` add to no boundary, so they are dropped first."""
    sums = torch.zeros(count + 1, dtype=torch.float64)  # k: [b_k, b_k+1); count: beyond
    low_value = _bits_float(low)
    for rows in _row_blocks(*scores.shape):
        block = scores[rows]
        values = block[block >= low_value]
        bucket = (values.view(torch.int32) - low).bitwise_right_shift_(shift).clamp_(max=count)
        sums += torch.bincount(bucket, weights=values.double(), minlength=count + 1)
    return sums.flip(0).cumsum(0).flip(0)[:count]


def find_matrix_threshold(scores: torch.Tensor, threshold: float, fan_out: int = 1024) -> float:
    """`find_threshold` over every entry of a large non-negative float32 matrix, without a
    sorted copy.

    The answer is the largest score `v` with `Σ_{s ≥ v} s ≥ threshold · Σ s` (the cumulative
    share first reaches τ at the last entry of some tie group, so this is the sort-based
    definition's value). Positive float32 values are ordered like their bit patterns, so we
    search the bit patterns: each pass over the matrix evaluates `fan_out` evenly spaced
    candidates at once and narrows the interval by that factor, so float32's 2^31 patterns
    take at most 4 passes.
    """
    threshold = check_threshold(threshold, "threshold")
    scores = scores.detach().to(torch.float32)  # the bit-pattern search needs float32
    smallest = _min_positive(scores)
    if smallest == float("inf"):
        return float("inf")
    if threshold >= 1.0:
        return smallest
    low, high = _float_bits(smallest), _float_bits(float(scores.max()))
    target = None
    while low < high:  # invariant: the answer's bit pattern lies in [low, high]
        shift = max(0, math.ceil(math.log2((high - low + 1) / fan_out)))
        width, count = 1 << shift, ((high - low) >> shift) + 1
        masses = _bucket_masses(scores, low, shift, count)
        if target is None:
            target = threshold * float(masses[0])  # everything is ≥ smallest: the total
        feasible = torch.nonzero(masses >= target).flatten()
        k = int(feasible[-1]) if feasible.numel() else 0
        low, high = low + k * width, min(high, low + (k + 1) * width - 1)
    return _bits_float(low)


# ---------------------------------------------------------------------- pruning
@dataclass(frozen=True, eq=False)
class PrunedGraph:
    """Result of `prune`.

    - `node_mask` bool [N]: kept nodes, dense order.
    - `storage_edge_mask` bool [n_sel + n_logits, n_sel + (L+1)·P]: kept edges in the stored
      rectangle's layout (`edge_mask` gives the dense N×N form).
    - `cumulative_scores` float32 [N]: `docs/algorithm.md` §10 step 4 (the graph JSON `influence`).
    - `node_influence` float32 [N]: raw influence on the unpruned graph (step 1).
    """

    graph: Graph
    node_mask: torch.Tensor
    storage_edge_mask: torch.Tensor
    cumulative_scores: torch.Tensor
    node_influence: torch.Tensor
    node_threshold: float
    edge_threshold: float

    @cached_property
    def edge_mask(self) -> torch.Tensor:
        """bool [N, N] over the dense order (rows = targets). Costs N² bytes."""
        g = self.graph
        dense = torch.zeros(g.n_nodes, g.n_nodes, dtype=torch.bool)
        dense[: g.n_selected, : g.n_sources] = self.storage_edge_mask[: g.n_selected]
        dense[g.n_sources :, : g.n_sources] = self.storage_edge_mask[g.n_selected :]
        return dense

    @property
    def kept_nodes(self) -> torch.Tensor:
        """Dense indices of kept nodes, ascending."""
        return torch.nonzero(self.node_mask).flatten()

    @property
    def n_kept_edges(self) -> int:
        return int(self.storage_edge_mask.sum())

    def kept_edges(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(target, source, weight) of kept edges, dense indices, row-major (target, then
        source) — the link order of the graph JSON."""
        rows, cols = torch.nonzero(self.storage_edge_mask, as_tuple=True)
        weights = self.graph.adjacency[rows, cols]
        return self.graph.dense_rows[rows], cols, weights


def prune(
    graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98
) -> PrunedGraph:
    """Prune an attribution graph (`docs/algorithm.md` §10 steps 1–4); see the module docstring."""
    node_threshold = check_threshold(node_threshold, "node_threshold")
    edge_threshold = check_threshold(edge_threshold, "edge_threshold")
    buffer = graph.adjacency.abs()
    influence = storage_influence(graph, _normalize_abs_(buffer))
    node_mask = _node_mask_step(graph, influence, node_threshold)

    torch.abs(graph.adjacency, out=buffer)
    _zero_dropped_(graph, buffer, node_mask)
    scores = _edge_scores_(graph, _normalize_abs_(buffer))
    edge_mask = scores >= find_matrix_threshold(scores, edge_threshold)
    del buffer, scores

    _clean_up_(graph, node_mask, edge_mask)
    return PrunedGraph(
        graph=graph,
        node_mask=node_mask,
        storage_edge_mask=edge_mask,
        cumulative_scores=cumulative_scores(influence),
        node_influence=influence,
        node_threshold=node_threshold,
        edge_threshold=edge_threshold,
    )


def _node_mask_step(graph: Graph, influence: torch.Tensor, threshold: float) -> torch.Tensor:
    mask = influence >= find_threshold(influence, threshold)
    mask[graph.token_range.start :] = True  # tokens and logits are always kept
    return mask


def _zero_dropped_(graph: Graph, matrix: torch.Tensor, node_mask: torch.Tensor) -> None:
    """Zero the rows and columns of dropped nodes in a stored-layout matrix."""
    matrix[~node_mask[graph.dense_rows]] = 0
    matrix[:, ~node_mask[: graph.n_sources]] = 0


def _edge_scores_(graph: Graph, normalized: torch.Tensor) -> torch.Tensor:
    """In place: `S[t,s] = Â'[t,s] · (I'[t] + w[t])` on the stored rectangle."""
    target_weight = storage_influence(graph, normalized) + graph.logit_weights
    return normalized.mul_(target_weight[graph.dense_rows].unsqueeze(1))


def _clean_up_(graph: Graph, node_mask: torch.Tensor, edge_mask: torch.Tensor) -> None:
    """Drop features/errors without kept outgoing edges and features without kept incoming
    edges, clearing the edges of dropped nodes, until nothing changes (in place)."""
    n_sel, n_feat_err = graph.n_selected, graph.n_selected + graph.n_errors
    while True:
        before = node_mask.clone()
        edge_mask[~node_mask[graph.dense_rows]] = False
        edge_mask[:, ~node_mask[: graph.n_sources]] = False
        node_mask[:n_feat_err] &= edge_mask[:, :n_feat_err].any(dim=0)
        node_mask[:n_sel] &= edge_mask[:n_sel].any(dim=1)
        if torch.equal(before, node_mask):
            return
