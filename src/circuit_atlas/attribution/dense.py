"""The dense engine: every row over every active feature's column, all gradients of a batch at once.

This is the engine circuit-atlas had before the compact one (`compact.py`), kept as
`attribute(..., engine="dense")`: it is the reference the compact engine is tested against, and
for short prompts it is as good. Memory grows with rows × active features (the row buffer), with
every (feature, target layer) pair's activation-scaled decoder vector, and with the gradients of
all layers of a batch at once.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from circuit_atlas.attribution.context import BatchStrategy, Trace, TraceResult
from circuit_atlas.attribution.exploration import next_features, partial_influence
from circuit_atlas.attribution.memory import check_memory, estimate_memory
from circuit_atlas.attribution.rows import LOGIT_LAYER, Injection, RowComputer, bucket_of
from circuit_atlas.attribution.sources import AttributionSources, collect_sources, decoder_slots

ASSEMBLY_CHUNK = 1024  # rows copied at a time when dropping unselected columns


def check_dense_memory(trace: Trace, strategy: BatchStrategy) -> int:
    """Refuse before anything large is allocated; returns the estimate in bytes."""
    config = trace.model.lm.text_config
    estimate = estimate_memory(
        n_layers=trace.n_layers,
        n_positions=trace.n_positions,
        d_model=trace.model.d_model,
        n_heads=int(getattr(config, "num_attention_heads", getattr(config, "n_head", 1))),
        n_active=trace.n_active,
        n_decoder_vectors=decoder_slots(trace.active, trace.n_positions, trace.model.transcoders),
        n_rows=trace.n_selected + trace.n_logits,
        batch_size=trace.settings.batch_size,
        forward_copies=1 if strategy == "vmap" else trace.settings.batch_size,
        dtype=trace.compute_dtype,
    )
    check_memory(estimate, trace.settings.memory_limit, trace.device)
    return estimate.total


def trace_dense(trace: Trace, strategy: BatchStrategy) -> TraceResult:
    estimate = check_dense_memory(trace, strategy)
    sources = collect_sources(trace.model.transcoders, trace.run, trace.compute_dtype)
    rows, row_nodes = _compute_all_rows(trace, sources, strategy)
    adjacency, selected = _keep_selected(rows, row_nodes, sources, trace.n_logits)
    return TraceResult(adjacency, selected, strategy, {"memory_estimate_bytes": int(estimate)})


class _DenseRows:
    """The row buffer being filled: `[n_logits + n_selected, n_columns]`, logit rows first."""

    def __init__(self, trace: Trace, sources: AttributionSources, strategy: BatchStrategy):
        self.trace, self.sources = trace, sources
        copies = 1 if strategy == "vmap" else trace.settings.batch_size

        def frozen_for(length: int):
            return trace.model.frozen_forward(trace.run.tokens, batch_size=copies, run=trace.run, length=length)

        self.computer = RowComputer(frozen_for, sources, strategy)
        n_logits, n_selected = trace.n_logits, trace.n_selected
        self.buffer = torch.zeros(n_logits + n_selected, sources.n_columns)
        self.row_nodes = torch.cat([torch.arange(n_logits) + sources.n_columns,
                                    torch.zeros(n_selected, dtype=torch.long)])
        self.bar = tqdm(total=n_logits + n_selected, desc="attribution rows", unit="row",
                        disable=not trace.settings.progress, leave=False)


def _compute_all_rows(trace: Trace, sources: AttributionSources, strategy: BatchStrategy):
    """All rows in one preallocated buffer (logit rows first), and the node each row belongs to.
    Rows are written in place, never concatenated."""
    state = _DenseRows(trace, sources, strategy)
    try:
        _logit_rows(state)
        _feature_rows(state)
    finally:
        state.bar.close()
    return state.buffer, state.row_nodes


def _logit_rows(state: _DenseRows) -> None:
    targets, batch_size = state.trace.logit_targets, state.trace.settings.batch_size
    out = state.buffer[: state.trace.n_logits]
    for start in range(0, len(targets), batch_size):
        vectors = targets.vectors[start : start + batch_size]
        count = vectors.shape[0]
        injection = Injection(
            layers=torch.full((count,), LOGIT_LAYER, dtype=torch.long),
            positions=torch.full((count,), state.sources.n_positions - 1, dtype=torch.long),
            vectors=vectors.to(state.sources.errors.device),
        )
        out[start : start + count] = state.computer.rows(injection).cpu()
        state.bar.update(count)


def _feature_rows(state: _DenseRows) -> None:
    """Fill the feature part of the buffer (after the logit rows) and of `row_nodes`."""
    trace, sources = state.trace, state.sources
    n_active, n_logits, n_selected = sources.n_active, trace.n_logits, trace.n_selected
    if n_selected == 0:
        return
    if n_selected == n_active:
        order = torch.arange(n_active)
        state.row_nodes[n_logits:] = order
        _rows_for(state, order, state.buffer[n_logits:])
        return
    # Layer of every node in [columns | logits]; errors and tokens never own a row.
    node_layers = torch.full((sources.n_columns + n_logits,), trace.n_layers, dtype=torch.long)
    node_layers[:n_active] = sources.active_features[:, 0]
    filled = n_logits
    step = trace.settings.update_interval * trace.settings.batch_size
    while filled < n_logits + n_selected:
        nodes = state.row_nodes[:filled]
        influence = partial_influence(state.buffer[:filled], nodes, trace.logit_targets.probabilities,
                                      sources.n_columns, node_layers[nodes])
        count = min(step, n_logits + n_selected - filled)
        chosen = next_features(influence, n_active, state.row_nodes[n_logits:filled], count)
        state.row_nodes[filled : filled + count] = chosen
        _rows_for(state, chosen, state.buffer[filled : filled + count])
        filled += count


def _rows_for(state: _DenseRows, features: torch.Tensor, out: torch.Tensor) -> None:
    """Write the rows of `features` into `out` (row i ↔ features[i]), computed in causal-cone order."""
    sources, computer = state.sources, state.computer
    order = cone_order(sources.active_features[features], computer.lengths, sources.n_layers)
    device = sources.errors.device
    batch_size = state.trace.settings.batch_size
    for start in range(0, features.numel(), batch_size):
        slots = order[start : start + batch_size]
        batch = features[slots]
        layers = sources.active_features[batch, 0]
        positions = sources.active_features[batch, 1]
        vectors = encoder_rows(state.trace.model.transcoders, sources.active_features[batch], device,
                               sources.errors.dtype)
        out[slots] = computer.rows(Injection(layers.to(device), positions.to(device), vectors)).cpu()
        state.bar.update(batch.numel())


def cone_order(features: torch.Tensor, lengths: list[int], n_layers: int) -> torch.Tensor:
    """Visit order grouping targets by prefix bucket, then layer: batches then share a short
    prefix and a shallow backward pass (both shrink the work per row)."""
    key = bucket_of(features[:, 1], lengths) * n_layers + features[:, 0]
    return torch.argsort(key, stable=True)


def encoder_rows(transcoders, features: torch.Tensor, device, dtype) -> torch.Tensor:
    """Raw encoder rows (not scaled by activation) of the given (layer, pos, feature) triples."""
    out = torch.empty(features.shape[0], transcoders.d_model, device=device, dtype=dtype)
    for layer in torch.unique(features[:, 0]).tolist():
        members = torch.nonzero(features[:, 0] == layer).flatten()
        rows = transcoders.encoder_rows(layer, features[members, 2])
        out[members] = rows.to(device=device, dtype=dtype)
    return out


def _keep_selected(rows, row_nodes, sources, n_logits):
    """Adjacency over the selected features only: rows ordered [features ascending | logits],
    columns [selected features | errors | tokens]. Copied a block of rows at a time."""
    feature_nodes = row_nodes[n_logits:]
    order = torch.argsort(feature_nodes)
    selected = feature_nodes[order]
    row_order = torch.cat([order + n_logits, torch.arange(n_logits)])
    keep_columns = torch.cat([selected, torch.arange(sources.n_active, sources.n_columns)])
    adjacency = torch.empty(row_order.numel(), keep_columns.numel())
    destination = torch.empty_like(row_order)
    destination[row_order] = torch.arange(row_order.numel())  # buffer row j -> adjacency row
    for start in range(0, rows.shape[0], ASSEMBLY_CHUNK):
        # Columns of a contiguous block of buffer rows, then whole rows into place: gathering
        # permuted rows first and then columns (advanced indexing) was the slow way round.
        block = rows[start : start + ASSEMBLY_CHUNK].index_select(1, keep_columns)
        adjacency.index_copy_(0, destination[start : start + block.shape[0]], block)
    return adjacency, selected
