"""The compact row buffer: exact rows over the columns that can still be selected.

The dense engine keeps every row over every active feature's column (`rows × n_active`: 215 GB of
float32 for 8k rows and a 16-layer CLT at 8k tokens) because exploration ranks all features by
influence. Here the buffer holds exact values only for the *kept* feature columns — those already
selected plus the strongest candidates (a few times the remaining budget) — and for the error and
token columns. For every other column it keeps a summary of the rows' absolute entries, one number
per group of rows, from which an upper bound of the column's influence follows (see
`upper_bounds`). Exploration certifies with these bounds that a dropped column cannot be among the
next features chosen; when a bound does not rule a column out, the column is filled in exactly
(forward-mode passes, `fill.py`) and competes with its exact influence. Selection is therefore
the dense engine's, not an approximation of it.

Bound. Row `r` was computed when its node had influence `base_r`; its entries are normalised by
`sum_r = Σ_c |A[r,c]|` over all columns (kept or not), computed when the row is made. A dropped
column's influence is `Σ_r w_r |A[r,c]| / sum_r` with the current node weights `w_r ≥ base_r`
(influence only grows as rows are added). The summary of group `g` is `S_g[c] = Σ_{r∈g} base_r
|A[r,c]| / sum_r`, so with `ρ_r = w_r / base_r` the influence is at most `Σ_g S_g[c] · max_{r∈g} ρ_r`
and at least `Σ_g S_g[c]`. Groups are the exploration rounds, so rows made together share a
group and their weights grow alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Kept feature columns beyond the node budget, as a multiple of it: the candidates exploration
# ranks exactly. More means fewer forward-mode fill-ins and a larger buffer.
KEEP_FACTOR = 2
# At most this many row groups for the dropped columns' summaries (consecutive batches share one).
MAX_GROUPS = 64
# Dropped columns filled in per step while certifying one round's choice.
FILL_STEP = 64
# A base weight below this is raised to it (a row whose node had no influence yet): any positive
# base keeps the bound valid.
MIN_BASE = 1e-30


def capacity_columns(n_selected: int, n_active: int, round_size: int, fill_step: int) -> int:
    """Kept feature columns of the buffer (all of them when the budget is close to the count).

    At least the budget, one round's choice and one fill-in step beyond it, so that a fill-in
    can always evict a column that this round cannot choose."""
    wanted = n_selected + max(int(n_selected * KEEP_FACTOR), round_size + fill_step)
    return n_active if wanted >= n_active else wanted


def n_row_groups(n_rows: int, batch_size: int) -> int:
    """Summary groups: one per batch of rows, at most `MAX_GROUPS`."""
    return max(1, min(MAX_GROUPS, -(-n_rows // batch_size)))


@dataclass
class RowTargets:
    """Where each row's target reads (for forward-mode fill-in): layer (-1: logits), position and
    direction."""

    layers: torch.Tensor  # [cap_rows] long
    positions: torch.Tensor  # [cap_rows] long
    vectors: torch.Tensor  # [cap_rows, d] compute dtype


class RowStore:
    """Rows `[n_rows, kept slots | errors | tokens]` with absolute row sums over all columns."""

    def __init__(self, *, n_active: int, n_fixed: int, capacity_rows: int, capacity_columns: int,
                 n_groups: int, d_model: int, vector_dtype: torch.dtype, device: torch.device | str = "cpu"):
        self.n_active, self.n_fixed = n_active, n_fixed
        self.keeps_all = capacity_columns >= n_active
        self.capacity_columns = n_active if self.keeps_all else capacity_columns
        self.values = torch.zeros(capacity_rows, self.capacity_columns + n_fixed, dtype=torch.float32, device=device)
        self.abs_sums = torch.zeros(capacity_rows, dtype=torch.float32, device=device)
        self.bases = torch.ones(capacity_rows, dtype=torch.float32, device=device)
        self.groups = torch.zeros(capacity_rows, dtype=torch.long, device=device)
        self.nodes = torch.zeros(capacity_rows, dtype=torch.long, device=device)
        self.targets = RowTargets(torch.zeros(capacity_rows, dtype=torch.long, device=device),
                                  torch.zeros(capacity_rows, dtype=torch.long, device=device),
                                  torch.zeros(capacity_rows, d_model, dtype=vector_dtype, device=device))
        self.n_rows = 0
        if self.keeps_all:
            self.slot_of = torch.arange(n_active, device=device)
            self.column_of = torch.arange(n_active, device=device)
            self.summary = None
        else:
            self.slot_of = torch.full((n_active,), -1, dtype=torch.long, device=device)
            self.column_of = torch.full((capacity_columns,), -1, dtype=torch.long, device=device)
            self.summary = torch.zeros(n_groups, n_active, dtype=torch.float32, device=device)
        self.visited = torch.zeros(n_active, dtype=torch.bool, device=device)
        self.filled = 0  # columns filled in by forward-mode passes (reported in the graph settings)

    # --- sizes -------------------------------------------------------------------------------------
    @staticmethod
    def nbytes(*, n_active: int, n_fixed: int, capacity_rows: int, capacity_columns: int, n_groups: int,
               d_model: int, vector_item: int) -> int:
        """Bytes a store of these sizes allocates (for the memory plan)."""
        keeps_all = capacity_columns >= n_active
        columns = n_active if keeps_all else capacity_columns
        size = capacity_rows * (columns + n_fixed) * 4 + capacity_rows * (4 + 4 + 8 + 8 + 8 + 8)
        size += capacity_rows * d_model * vector_item + n_active * (8 + 1) + columns * 8
        if not keeps_all:
            size += n_groups * n_active * 4
        return size

    @property
    def kept_columns(self) -> torch.Tensor:
        """Active-feature indices of the kept columns, ascending."""
        return torch.sort(self.column_of[self.column_of >= 0]).values

    def rows(self) -> torch.Tensor:
        return self.values[: self.n_rows]

    # --- writing rows ------------------------------------------------------------------------------
    def add(self, features: torch.Tensor, fixed: torch.Tensor, nodes: torch.Tensor, bases: torch.Tensor,
            group: int, targets: RowTargets) -> None:
        """Append a batch of rows: `features` `[B, n_active]` and `fixed` `[B, n_fixed]` (float32,
        any device), the node of each row (active index, or `n_active + i` for logit `i`), the
        influence of each row's node now (`bases`), and its exploration round's `group`."""
        count = int(features.shape[0])
        start, stop = self.n_rows, self.n_rows + count
        device = self.values.device
        sums = features.abs().sum(1) + fixed.abs().sum(1)
        if self.summary is not None:
            base = bases.to(features.device, torch.float32).clamp_min(MIN_BASE)
            scale = base / sums.clamp_min(1e-8)
            # Every column's term is added; kept columns' entries are rewritten when dropped.
            self.summary[group] += (scale[None] @ features.abs()).flatten().to(device)
            self.bases[start:stop] = base.to(device)
        block = self.values[start:stop]
        if self.keeps_all:
            block[:, : self.n_active] = features.to(device)
        else:
            slots = torch.nonzero(self.column_of >= 0).flatten()
            block[:, slots] = features[:, self.column_of[slots].to(features.device)].to(device)
        block[:, self.capacity_columns :] = fixed.to(device)
        self.abs_sums[start:stop] = sums.to(device)
        self.groups[start:stop] = group
        self.nodes[start:stop] = nodes.to(device)
        self.targets.layers[start:stop] = targets.layers.to(device)
        self.targets.positions[start:stop] = targets.positions.to(device)
        self.targets.vectors[start:stop] = targets.vectors.to(device=device, dtype=self.targets.vectors.dtype)
        self.n_rows = stop
        feature_rows = nodes[nodes < self.n_active].to(device)
        self.visited[feature_rows] = True

    # --- which columns are kept ------------------------------------------------------------------------
    def keep(self, columns: torch.Tensor, values: torch.Tensor | None) -> torch.Tensor:
        """Give `columns` (active indices, not kept) free slots and write their values `[n_rows, k]`
        (None: zeros). Returns the slots."""
        free = torch.nonzero(self.column_of < 0).flatten()[: columns.numel()]
        if free.numel() < columns.numel():
            raise RuntimeError("row store: no free column slot (evict first)")
        self.column_of[free] = columns
        self.slot_of[columns] = free
        block = self.values[: self.n_rows]
        block[:, free] = 0.0 if values is None else values.to(block.device, torch.float32)
        return free

    def drop(self, columns: torch.Tensor) -> None:
        """Stop keeping `columns` (kept, never visited): their exact values become summaries."""
        if self.summary is None:
            raise RuntimeError("a store that keeps every column drops none")
        slots = self.slot_of[columns]
        rows = self.values[: self.n_rows, slots].abs()
        rows *= (self.bases[: self.n_rows] / self.abs_sums[: self.n_rows].clamp_min(1e-8))[:, None]
        summary = torch.zeros(self.summary.shape[0], columns.numel(), device=rows.device)
        summary.index_add_(0, self.groups[: self.n_rows], rows)
        self.summary[:, columns] = summary
        self.column_of[slots] = -1
        self.slot_of[columns] = -1
        self.values[:, slots] = 0.0

    def free_slots(self) -> int:
        return int((self.column_of < 0).sum())

    # --- bounds ------------------------------------------------------------------------------------
    def upper_bounds(self, row_weights: torch.Tensor) -> torch.Tensor:
        """Upper bound of every dropped column's influence given the rows' current node weights
        (`[n_active]`; meaningless for kept columns)."""
        rho = row_weights.to(self.bases.device) / self.bases[: self.n_rows]
        rho_max = torch.zeros(self.summary.shape[0], device=rho.device)
        rho_max.scatter_reduce_(0, self.groups[: self.n_rows], rho, reduce="amax", include_self=True)
        return rho_max @ self.summary

    def has_mass(self, columns: torch.Tensor) -> torch.Tensor:
        """Whether each dropped column has any non-zero entry in the rows so far."""
        return (self.summary[:, columns] > 0).any(0)
