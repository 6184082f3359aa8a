"""Exact columns for rows already computed, by forward-mode passes of the frozen model.

A row is one target's view of every source; a column is one source's effect on every target. When
exploration selects a feature whose column the compact buffer had dropped, that column is needed
for every row computed so far. The frozen replacement model is linear in its sources, so one
forward-mode pass that adds the feature's vectors (activation × decoder row, at every layer its
decoder writes to) carries its exact effect to every input hook and to the final norm; dotting
those tangents with each row's target direction gives the column. A batch of features is one pass
with one copy of the prompt per feature.
"""

from __future__ import annotations

import torch

from circuit_atlas.attribution.rows import LOGIT_LAYER
from circuit_atlas.attribution.store import RowTargets

# Bytes of one prompt copy's tensors alive at once in a forward-mode pass, in units of
# positions × d_model × item (primal and tangent of the residual, attention and projections).
FILL_COPY_FACTOR = 12


def fill_batch_size(n_positions: int, d_model: int, item: int, budget: int, limit: int = 64) -> int:
    """Features per forward-mode pass within `budget` bytes."""
    per_copy = FILL_COPY_FACTOR * n_positions * d_model * item
    return max(1, min(limit, budget // max(1, per_copy)))


def fill_columns(model, run, active: torch.Tensor, values: torch.Tensor, columns: torch.Tensor,
                 targets: RowTargets, n_rows: int, batch_size: int) -> torch.Tensor:
    """Columns `[n_rows, k]` (float32) of the active features `columns` for the first `n_rows`
    rows, whose targets are `targets` (a logit row reads the final norm, a feature row its input
    hook). `active` `[n, 3]` and `values` `[n]` describe all active features."""
    tc = model.transcoders
    layers = targets.layers[:n_rows]
    positions = targets.positions[:n_rows]
    vectors = targets.vectors[:n_rows]
    length = int(positions.max()) + 1
    device, dtype = run.errors.device, run.errors.dtype
    out = torch.zeros(n_rows, columns.numel(), dtype=torch.float32)
    for start in range(0, columns.numel(), batch_size):
        chunk = columns[start : start + batch_size]
        tangents = _source_tangents(tc, active[chunk], values[chunk], length, device, dtype)
        if not tangents:
            continue  # features at positions after every target: no effect on any row
        moved = model.frozen_tangents(run, tangents, length=length)
        out[:, start : start + chunk.numel()] = _read_rows(moved, layers, positions, vectors).cpu()
    return out


def _source_tangents(tc, features: torch.Tensor, values: torch.Tensor, length: int, device, dtype):
    """`{target layer: [k, length, d]}`: feature `i`'s activation-scaled decoder row at its
    position in copy `i`, for every layer its decoder writes to."""
    k = features.shape[0]
    tangents: dict[int, torch.Tensor] = {}
    for i, (layer, position, feature) in enumerate(features.tolist()):
        if position >= length:
            continue
        for target in tc.target_layers(layer):
            row = tc.decoder_rows(layer, torch.tensor([feature]), target)[0]
            if target not in tangents:
                tangents[target] = torch.zeros(k, length, tc.d_model, device=device, dtype=dtype)
            tangents[target][i, position] = float(values[i]) * row.to(device=device, dtype=torch.float32)
    return tangents


def _read_rows(moved, layers: torch.Tensor, positions: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """`[n_rows, k]`: each row's target direction dotted with the tangent where it reads."""
    k = moved.final_hidden.shape[0]
    out = torch.zeros(layers.shape[0], k, dtype=torch.float32, device=moved.final_hidden.device)
    for layer in torch.unique(layers).tolist():
        rows = torch.nonzero(layers == layer).flatten()
        tensor = moved.final_hidden if layer == LOGIT_LAYER else moved.inputs[layer]
        at = tensor[:, positions[rows].to(tensor.device)]  # [k, n, d]
        vec = vectors[rows].to(device=tensor.device, dtype=torch.float32)
        out[rows.to(out.device)] = torch.einsum("knd,nd->nk", at.float(), vec)
    return out
