"""Which decoder rows meet which gradients: the plan of feature contributions, without the vectors.

A feature `s = (layer, position, f)` contributes `a_s · ⟨W_dec^{layer→k}[f], g(k, position)⟩` to a
row for every target layer `k` its decoder writes to. Storing the activation-scaled vectors
`a_s · W_dec` for every (feature, target layer) — what the dense engine does — is `n_active ×
targets × d` numbers: 450 GB for a 16-layer CLT at 8k tokens. The plan stores only indices and
activations; the unscaled rows are gathered from the transcoders' decoders one block of positions
at a time while a gradient is contracted, and the activation is applied after the dot product.
Blocks may be kept resident (`DecoderPlan.cache`) while a memory budget allows, which makes later
batches as fast as with stored vectors.

Blocks group positions whose counts are within `WIDTH_GROWTH` of each other, padded to the
busiest, so one block is one batched matrix product `[p, m, d] × [p, d, B]`.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

import torch

from circuit_atlas.attribution.sources import width_classes

# Gathered rows of one block at most this many bytes (a block is split by positions beyond it).
BLOCK_BYTES = 32 << 20


@dataclass
class SlotBlock:
    """Contributions into one target layer from a few positions, padded to `m` slots each.

    Padding slots have activation 0 and column 0 and hold zero rows: their dot products are
    multiplied by 0 and added to column 0, which changes nothing, and saves masking every batch.
    `by_source[s]` = (flat slot indices `row · m + slot`, ascending, and feature indices) of the
    slots whose feature belongs to source layer `s`: one gather and one copy per source.
    """

    positions: torch.Tensor  # [p] ascending
    position_list: list[int]  # the same on the host (prefix cuts without a device sync)
    columns: torch.Tensor  # [p, m] index among the active features
    activations: torch.Tensor  # [p, m] float32, 0 in padding slots
    by_source: dict[int, tuple[torch.Tensor, torch.Tensor]]
    rows: torch.Tensor | None = field(default=None, repr=False)  # cached [p, m, d] unscaled rows

    @property
    def slots(self) -> int:
        return int(self.columns.numel())


@dataclass
class DecoderPlan:
    """Blocks of (position, source feature) slots for every target layer."""

    blocks: list[list[SlotBlock]]  # [target layer] -> blocks
    dtype: torch.dtype
    d_model: int

    @property
    def slots(self) -> int:
        return sum(block.slots for layer in self.blocks for block in layer)

    @property
    def largest_block_slots(self) -> int:
        return max((block.slots for layer in self.blocks for block in layer), default=0)

    def cached_bytes(self) -> int:
        return sum(b.rows.numel() * b.rows.element_size() for layer in self.blocks for b in layer
                   if b.rows is not None)

    def cache(self, transcoders, budget: int) -> int:
        """Gather and keep blocks' rows while they fit in `budget` bytes; returns bytes kept.

        Lowest target layers first: a batch's backward pass reaches every layer below its
        deepest target, so low layers are read by the most batches.
        """
        item = torch.tensor([], dtype=self.dtype).element_size()
        used = 0
        for target, layer_blocks in enumerate(self.blocks):
            for block in layer_blocks:
                size = block.slots * self.d_model * item
                if used + size > budget:
                    return used
                block.rows = gather_rows(transcoders, block, target, self.dtype)
                used += size
        return used

    def rows_of(self, transcoders, block: SlotBlock, target: int, count: int,
                scratch: Scratch | None = None) -> torch.Tensor:
        """Unscaled rows `[count, m, d]` of the first `count` positions of `block`."""
        if block.rows is not None:
            return block.rows[:count]
        return gather_rows(transcoders, block, target, self.dtype, count, scratch)


class Scratch:
    """Flat buffers reused by name while one gradient is contracted.

    On CPU a fresh tensor of a block's size (tens of MB) may be mapped anew and page-faulted on
    first touch, which costs more than the gather itself (about 4x, measured at d_model 2048);
    one buffer per role serves every block of a layer instead.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """An uninitialised tensor of `shape` (the first elements of the role's buffer)."""
        numel = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < numel or buffer.dtype != dtype or buffer.device != device:
            buffer = torch.empty(numel, dtype=dtype, device=device)
            self._buffers[name] = buffer
        return buffer[:numel].view(shape)


def gather_rows(transcoders, block: SlotBlock, target: int, dtype: torch.dtype,
                count: int | None = None, scratch: Scratch | None = None) -> torch.Tensor:
    """Decoder rows `[p, m, d]` (not scaled by activation) of a block's slots, zeros in padding.

    With `scratch` the rows live in its reused buffers (valid until the next block's gather)."""
    count = block.columns.shape[0] if count is None else count
    width = block.columns.shape[1]
    d_model = transcoders.d_model
    device = block.columns.device
    if scratch is None:
        out = torch.zeros(count * width, d_model, dtype=dtype, device=device)
    else:
        out = scratch.get("rows", (count * width, d_model), dtype, device).zero_()
    for source, (flat, features) in block.by_source.items():
        used = int(torch.searchsorted(flat, torch.tensor(count * width, device=flat.device)))
        if used == 0:
            continue
        if scratch is None:
            rows = transcoders.decoder_rows(source, features[:used], target).to(device=device, dtype=dtype)
        else:
            staging = scratch.get("staging", (used, d_model), dtype, device)
            rows = transcoders.decoder_rows_into(source, features[:used], target, staging)
        out.index_copy_(0, flat[:used], rows)
    return out.view(count, width, d_model)


def plan_decoders(transcoders, active: torch.Tensor, values: torch.Tensor, n_positions: int,
                  dtype: torch.dtype, device: torch.device) -> DecoderPlan:
    """Slots for every (active feature, target layer) pair, in blocks of similar-count positions.

    `active` `[n, 3]` (layer, position, feature), lexicographic; `values` `[n]` activations.
    `plan_sizes` counts the slots (padding included) before anything is laid out.
    """
    active = active.to(device)
    values = values.to(device=device, dtype=torch.float32)
    item = torch.tensor([], dtype=dtype).element_size()
    max_slots = max(1, BLOCK_BYTES // (item * int(transcoders.d_model)))
    blocks: list[list[SlotBlock]] = []
    for target in range(transcoders.n_layers):
        writers = [s for s in transcoders.source_layers(target)]
        members = torch.nonzero(torch.isin(active[:, 0], torch.tensor(writers, device=device))).flatten()
        blocks.append(_blocks_for(active, values, members, n_positions, device, max_slots))
    return DecoderPlan(blocks, dtype, int(transcoders.d_model))


def _blocks_for(active, values, members, n_positions: int, device, max_slots: int) -> list[SlotBlock]:
    if members.numel() == 0:
        return []
    positions = active[members, 1]
    order = torch.argsort(positions, stable=True)
    members, positions = members[order], positions[order]
    counts = torch.bincount(positions, minlength=n_positions)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(positions.numel(), device=device) - starts[positions]
    classes = width_classes(counts)
    out = []
    pieces = []
    for cls in torch.unique(classes[counts > 0]).tolist():
        in_class = torch.nonzero((classes == cls) & (counts > 0)).flatten()
        per_block = max(1, max_slots // int(counts[in_class].max()))
        pieces.extend(in_class[i : i + per_block] for i in range(0, in_class.numel(), per_block))
    for rows_positions in pieces:
        row_of = torch.full((n_positions,), -1, dtype=torch.long, device=device)
        row_of[rows_positions] = torch.arange(rows_positions.numel(), device=device)
        mine = row_of[positions] >= 0
        r, c = row_of[positions[mine]], slot[mine]
        chosen = members[mine]
        shape = (rows_positions.numel(), int(counts[rows_positions].max()))
        columns = torch.zeros(shape, dtype=torch.long, device=device)
        acts = torch.zeros(shape, dtype=torch.float32, device=device)
        columns[r, c] = chosen
        acts[r, c] = values[chosen]
        flat = r * shape[1] + c
        by_source = {}
        for source in torch.unique(active[chosen, 0]).tolist():
            mine_here = active[chosen, 0] == source
            order = torch.argsort(flat[mine_here])
            by_source[int(source)] = (flat[mine_here][order], active[chosen[mine_here], 2][order])
        out.append(SlotBlock(rows_positions, rows_positions.tolist(), columns, acts, by_source))
    return out


def plan_sizes(active: torch.Tensor, n_positions: int, transcoders, dtype: torch.dtype) -> tuple[int, int]:
    """(slots, slots of the largest block) `plan_decoders` will lay out, padding included, from the
    counts alone: the memory plan is checked before anything is laid out."""
    item = torch.tensor([], dtype=dtype).element_size()
    max_slots = max(1, BLOCK_BYTES // (item * int(transcoders.d_model)))
    total, largest = 0, 0
    for target in range(transcoders.n_layers):
        writers = torch.tensor(list(transcoders.source_layers(target)), device=active.device)
        counts = torch.bincount(active[torch.isin(active[:, 0], writers), 1], minlength=n_positions)
        classes = width_classes(counts)
        for cls in torch.unique(classes[counts > 0]).tolist():
            members = counts[(classes == cls) & (counts > 0)]  # in position order, like the plan
            per_block = max(1, max_slots // int(members.max()))
            for start in range(0, members.numel(), per_block):
                piece = members[start : start + per_block]
                size = piece.numel() * int(piece.max())
                total += size
                largest = max(largest, size)
    return total, largest


def contract(out: torch.Tensor, gradient: torch.Tensor, plan: DecoderPlan, target: int, reach: int,
             transcoders) -> None:
    """Add `a_s · ⟨W_dec[s→target], gradient[b, pos(s)]⟩` into column `s` of `out` `[B, n_active]`.

    `gradient` `[B, P', d]` is the gradient at the output hook of `target`; positions at or
    beyond `reach` (and beyond `P'`) have zero gradient and are skipped.
    """
    reach = min(reach, gradient.shape[1])
    by_position = gradient.permute(1, 2, 0)  # [P', d, B] view: one gather per block
    scratch = Scratch()  # the blocks' rows, gradients and products: one buffer each (see Scratch)
    batch, d_model = int(gradient.shape[0]), int(gradient.shape[2])
    for block in plan.blocks[target]:
        count = bisect.bisect_left(block.position_list, reach)
        if count == 0:
            continue
        rows = plan.rows_of(transcoders, block, target, count, scratch)  # [count, m, d]
        positions = block.positions[:count]
        if gradient.dtype == rows.dtype:
            grads = scratch.get("grads", (count, d_model, batch), rows.dtype, rows.device)
            torch.index_select(by_position, 0, positions, out=grads)  # [count, d, B]
        else:
            grads = by_position[positions].to(rows.dtype)
        if rows.dtype == torch.float32:
            dots = scratch.get("dots", (count, rows.shape[1], batch), rows.dtype, rows.device)
            torch.bmm(rows, grads, out=dots)  # [count, m, B]
        else:
            dots = torch.bmm(rows, grads).float()
        dots *= block.activations[:count, :, None]
        out.index_add_(1, block.columns[:count].reshape(-1), dots.reshape(-1, dots.shape[-1]).t())
