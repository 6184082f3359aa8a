"""Source vectors of the attribution graph: what each node writes into the frozen model.

Every source node contributes a vector at a hook the frozen model reads linearly:
- an active feature writes `activation × decoder row` into the output hook of each layer its
  decoder reaches (one layer for a PLT, every later layer for a CLT), at its own position;
- an error node writes the reconstruction error `E[l, p]` at the output hook of layer `l`;
- a token node writes its embedding vector into the residual stream entering layer 0.
An edge's weight is the dot product of that vector with the target's gradient at the same place.

Decoder vectors are grouped by the layer they are written to, because the backward pass delivers
gradients one output hook at a time.
"""

from __future__ import annotations

import math

from dataclasses import dataclass

import torch


# Positions whose vector counts are within this factor share one padded block (see DecoderGroup).
WIDTH_GROWTH = 1.5


@dataclass
class DecoderBlock:
    """Decoder vectors of some positions, padded to the largest count among them.

    Vectors are laid out `[p, m, d]` (position, slot, model dim), so the dot products with a batch
    of gradients `[B, p, d]` are one batched matrix product instead of a gather of `B × n × d`
    elements. Unused slots hold zero vectors and column index 0 and are masked out by `valid`.
    """

    positions: torch.Tensor  # [p] ascending prompt positions of the rows
    position_list: list[int]  # the same on the host: prefix cuts without a device sync
    columns: torch.Tensor  # [p, m] index of the source feature among the active features
    vectors: torch.Tensor  # [p, m, d] activation-scaled decoder rows
    valid: torch.Tensor  # [p, m] bool: slot holds a real vector


@dataclass
class DecoderGroup:
    """Decoder vectors written into the output hook of one layer, in blocks of positions.

    Why blocks: padding every position to the busiest one wasted 2.6-2.8× memory on realistic
    count spreads (and decoder vectors dominate a CLT's memory). Positions are grouped by count
    into classes `WIDTH_GROWTH` apart, so each block is padded by at most that factor.
    """

    blocks: list[DecoderBlock]

    @property
    def count(self) -> int:
        return sum(int(block.valid.sum()) for block in self.blocks)

    @property
    def slots(self) -> int:
        """Stored vectors, padding included (what the memory estimate counts)."""
        return sum(block.valid.numel() for block in self.blocks)


@dataclass
class AttributionSources:
    """Everything that feeds edges, for one prompt."""

    active_features: torch.Tensor  # [n_act, 3] (layer, position, feature), lexicographic
    activation_values: torch.Tensor  # [n_act]
    decoder_groups: list[DecoderGroup]  # one per output layer
    errors: torch.Tensor  # [L, P, d]
    token_vectors: torch.Tensor  # [P, d]

    @property
    def n_active(self) -> int:
        return int(self.active_features.shape[0])

    @property
    def n_layers(self) -> int:
        return int(self.errors.shape[0])

    @property
    def n_positions(self) -> int:
        return int(self.errors.shape[1])

    @property
    def n_columns(self) -> int:
        """Source columns while computing: active features, errors, tokens."""
        return self.n_active + (self.n_layers + 1) * self.n_positions

    def error_column(self, layer: int, position: int) -> int:
        return self.n_active + layer * self.n_positions + position

    def token_column(self, position: int) -> int:
        return self.n_active + self.n_layers * self.n_positions + position


def collect_sources(transcoders, run, compute_dtype: torch.dtype) -> AttributionSources:
    """Gather activation-scaled decoder vectors, errors and token vectors from a clean run."""
    activations = run.activations.coalesce()
    indices = activations.indices().t().contiguous()  # [n_act, 3]
    values = activations.values()
    n_layers = run.errors.shape[0]
    device = run.errors.device
    per_target: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = [[] for _ in range(n_layers)]
    for source_layer in range(n_layers):
        in_layer = torch.nonzero(indices[:, 0] == source_layer).flatten()
        if in_layer.numel() == 0:
            continue
        positions = indices[in_layer, 1]
        features = indices[in_layer, 2]
        scale = values[in_layer].to(compute_dtype).unsqueeze(1)
        for target_layer in transcoders.target_layers(source_layer):
            rows = transcoders.decoder_rows(source_layer, features, target_layer)
            vectors = rows.to(device=device, dtype=compute_dtype) * scale
            per_target[target_layer].append((in_layer, positions, vectors))
    n_positions, d_model = run.errors.shape[1], run.errors.shape[2]
    groups = []
    for target in range(n_layers):  # free each layer's unpadded vectors once merged
        parts, per_target[target] = per_target[target], []
        groups.append(_merge_group(parts, n_positions, d_model, device, compute_dtype))
        del parts
    return AttributionSources(
        active_features=indices.cpu(),
        activation_values=values.float().cpu(),
        decoder_groups=groups,
        errors=run.errors.to(compute_dtype),
        token_vectors=run.token_vectors.to(compute_dtype),
    )


def width_classes(counts: torch.Tensor) -> torch.Tensor:
    """Block class of each position from its vector count (positions in one class are padded to
    the class's largest count, at most `WIDTH_GROWTH` times their own)."""
    return torch.floor(torch.log(counts.clamp_min(1).double()) / math.log(WIDTH_GROWTH)).long()


def decoder_slots(active: torch.Tensor, n_positions: int, transcoders) -> int:
    """Vectors `collect_sources` will store (padding included) for active features `[n, 3]`
    (layer, position, feature), computed from counts alone so memory can be checked before any
    decoder vector is gathered."""
    total = 0
    for target in range(transcoders.n_layers):
        writers = [l for l in range(target + 1) if target in transcoders.target_layers(l)]
        mask = torch.isin(active[:, 0], torch.tensor(writers, device=active.device))
        counts = torch.bincount(active[mask, 1], minlength=n_positions)
        if int(counts.sum()) == 0:
            continue
        classes = width_classes(counts)
        for cls in torch.unique(classes[counts > 0]).tolist():
            members = (classes == cls) & (counts > 0)
            total += int(members.sum()) * int(counts[members].max())
    return total


def _merge_group(parts, n_positions: int, d_model: int, device, dtype) -> DecoderGroup:
    if not parts:
        return DecoderGroup([])
    columns, positions, vectors = (torch.cat(items) for items in zip(*parts))
    order = torch.argsort(positions, stable=True)
    columns, positions, vectors = columns[order], positions[order], vectors[order]
    counts = torch.bincount(positions, minlength=n_positions)
    starts = torch.cumsum(counts, 0) - counts
    slots = torch.arange(positions.numel(), device=device) - starts[positions]
    width_class = width_classes(counts)
    blocks = []
    for cls in torch.unique(width_class[counts > 0]).tolist():
        members = torch.nonzero((width_class == cls) & (counts > 0)).flatten()  # ascending
        row_of = torch.full((n_positions,), -1, dtype=torch.long, device=device)
        row_of[members] = torch.arange(members.numel(), device=device)
        mine = row_of[positions] >= 0
        rows, cols = row_of[positions[mine]], slots[mine]
        width = int(counts[members].max())
        padded = torch.zeros(members.numel(), width, d_model, device=device, dtype=dtype)
        padded_columns = torch.zeros(members.numel(), width, dtype=torch.long, device=device)
        valid = torch.zeros(members.numel(), width, dtype=torch.bool, device=device)
        padded[rows, cols] = vectors[mine]
        padded_columns[rows, cols] = columns[mine]
        valid[rows, cols] = True
        blocks.append(DecoderBlock(members, members.tolist(), padded_columns, padded, valid))
    return DecoderGroup(blocks)
