"""Which features get rows when `max_feature_nodes` is smaller than the number of active features.

Rows are expensive, so features are visited in order of their estimated influence on the logit
targets, and the estimate is refreshed as rows arrive: influence flows from the targets back
through the rows computed so far (absolute values, each row normalised to sum 1), so a feature
that feeds an influential feature rises in the ranking once that feature's row exists.
"""

from __future__ import annotations

import torch

ROW_BLOCK = 1024  # rows made absolute at a time


def partial_influence(
    rows: torch.Tensor, row_nodes: torch.Tensor, logit_weights: torch.Tensor, n_columns: int,
    row_layers: torch.Tensor, row_sums: torch.Tensor | None = None,
) -> torch.Tensor:
    """Influence on the targets of every source column, through the rows computed so far.

    `rows` is `[R, n_columns]`; `row_nodes[r]` is the node that row `r` belongs to, as an index
    into the node space `[columns | logits]`; `logit_weights` weights the logit nodes;
    `row_layers[r]` is the layer of row `r`'s node (logit rows above the last layer).

    Influence is `Σ_r w(r) · |A[r, c]| / Σ_c' |A[r, c']|`, where `w(r)` is the logit weight of a
    logit row and the influence of its feature otherwise. Edges only run from lower layers to
    higher ones, so one sweep over the rows from the top layer down finishes every row's weight
    before its row is read: each row is made absolute once per call (an iteration to a fixed
    point would read the whole buffer once per layer of depth). No normalised copy of the buffer
    is built: a block of rows at a time is made absolute, summed and multiplied.

    `row_sums` gives each row's absolute sum when `rows` holds only some of its columns (the
    compact buffer); by default it is summed from `rows`.
    """
    return influence_and_weights(rows, row_nodes, logit_weights, n_columns, row_layers, row_sums)[0]


def influence_and_weights(
    rows: torch.Tensor, row_nodes: torch.Tensor, logit_weights: torch.Tensor, n_columns: int,
    row_layers: torch.Tensor, row_sums: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`partial_influence`, and the final weight of every row's node (`[R]`), which the compact
    buffer's bounds need."""
    weight = torch.zeros(n_columns + logit_weights.shape[0], dtype=rows.dtype, device=rows.device)
    weight[n_columns:] = logit_weights.to(rows.dtype)
    influence = torch.zeros(n_columns, dtype=rows.dtype, device=rows.device)
    layers = row_layers.to(rows.device)
    for layer in torch.unique(layers).flip(0).tolist():  # top (logits) first
        members = torch.nonzero(layers == layer).flatten()
        flow = torch.zeros(n_columns, dtype=rows.dtype, device=rows.device)
        for start in range(0, members.numel(), ROW_BLOCK):
            chunk = members[start : start + ROW_BLOCK]
            scaled = weight[row_nodes[chunk]]
            if not bool(scaled.any()):
                continue
            block = rows[chunk].abs_()  # a gathered copy, made absolute in place
            sums = block.sum(dim=1) if row_sums is None else row_sums[chunk].to(block.dtype)
            scaled = scaled / sums.clamp_min(1e-8)
            flow += scaled @ block
        influence += flow
        weight[:n_columns] += flow  # only lower layers' nodes receive it: none is read yet
    return influence, weight[row_nodes]


def next_features(
    influence: torch.Tensor, n_active: int, visited: torch.Tensor, count: int
) -> torch.Tensor:
    """The `count` most influential active features not yet visited (indices into active features)."""
    scores = influence[:n_active].clone()
    scores[visited] = -float("inf")
    order = torch.argsort(scores, descending=True, stable=True)
    return order[:count]
