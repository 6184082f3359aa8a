"""Which features get rows when `max_feature_nodes` is smaller than the number of active features.

Rows are expensive, so features are visited in order of their estimated influence on the logit
targets, and the estimate is refreshed as rows arrive: influence flows from the targets back
through the rows computed so far (absolute values, each row normalised to sum 1), so a feature
that feeds an influential feature rises in the ranking once that feature's row exists.
"""

from __future__ import annotations

import torch

from circuit_atlas.errors import AttributionError

MAX_PARTIAL_INFLUENCE_STEPS = 128
ROW_BLOCK = 1024  # rows made absolute at a time


def partial_influence(
    rows: torch.Tensor, row_nodes: torch.Tensor, logit_weights: torch.Tensor, n_columns: int
) -> torch.Tensor:
    """Influence on the targets of every source column, through the rows computed so far.

    `rows` is `[R, n_columns]`; `row_nodes[r]` is the node that row `r` belongs to, as an index
    into the node space `[columns | logits]`; `logit_weights` weights the logit nodes.
    Rows are normalised to absolute sums of 1; rather than building that normalised copy, each
    step scales the weights by 1/rowsum and multiplies with `|rows|` a block at a time, so the
    extra memory is one block, not a second row buffer.
    """
    row_sums = torch.cat([block.abs().sum(dim=1) for block in rows.split(ROW_BLOCK)]).clamp_min(1e-8)
    weight = torch.zeros(n_columns + logit_weights.shape[0], dtype=rows.dtype, device=rows.device)
    weight[n_columns:] = logit_weights.to(rows.dtype)
    influence = torch.zeros(n_columns, dtype=rows.dtype, device=rows.device)
    for _ in range(MAX_PARTIAL_INFLUENCE_STEPS):
        scaled = weight[row_nodes] / row_sums
        flow = torch.zeros(n_columns, dtype=rows.dtype, device=rows.device)
        for start in range(0, rows.shape[0], ROW_BLOCK):
            block_weights = scaled[start : start + ROW_BLOCK]
            if block_weights.any():
                flow += block_weights @ rows[start : start + ROW_BLOCK].abs()
        if not flow.any():
            return influence
        influence += flow
        weight = torch.zeros_like(weight)
        weight[:n_columns] = flow
    raise AttributionError("influence did not converge: the rows computed so far contain a cycle")


def next_features(
    influence: torch.Tensor, n_active: int, visited: torch.Tensor, count: int
) -> torch.Tensor:
    """The `count` most influential active features not yet visited (indices into active features)."""
    scores = influence[:n_active].clone()
    scores[visited] = -float("inf")
    order = torch.argsort(scores, descending=True, stable=True)
    return order[:count]
