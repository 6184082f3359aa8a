"""`attribute(model, prompt, ...) -> Graph`: the attribution graph of one prompt.

Phases: (1) a clean run gives active features, errors and the logits; (2) logit targets are
resolved; (3) a memory estimate is checked before anything large is allocated; (4) one frozen
forward pass is built and logit rows, then feature rows, are computed by batched backward passes;
(5) the rows are assembled into a `Graph` whose columns keep only the features that got rows.
See `docs/algorithm.md` for the definitions followed here.
"""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from circuit_atlas.attribution.exploration import next_features, partial_influence
from circuit_atlas.attribution.memory import check_memory, estimate_memory
from circuit_atlas.attribution.rows import LOGIT_LAYER, Injection, RowComputer, bucket_of
from circuit_atlas.models.language_model import unembedding_matrix
from circuit_atlas.models.token_text import token_display_strings
from circuit_atlas.attribution.sources import AttributionSources, collect_sources, decoder_slots
from circuit_atlas.attribution.targets import LogitTargets, TargetSpec, build_logit_targets
from circuit_atlas.errors import AttributionError
from circuit_atlas.graph import Graph

STRATEGIES = ("auto", "vmap", "expand")
ASSEMBLY_CHUNK = 1024  # rows copied at a time when dropping unselected columns


def attribute(
    model,
    prompt,
    *,
    targets: Sequence[TargetSpec] | None = None,
    max_n_logits: int = 10,
    desired_logit_prob: float = 0.95,
    max_feature_nodes: int | None = None,
    batch_size: int = 64,
    update_interval: int = 4,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    memory_limit: int | None = None,
    strategy: str = "auto",
    progress: bool = True,
):
    """Trace the attribution graph of `prompt` through `model` (a `ReplacementModel`).

    targets: None for the most likely next tokens (until their probability sums to
        `desired_logit_prob`, at most `max_n_logits`); or a list of token strings, token ids,
        `CustomTarget` directions and `LogitDifference` pairs.
    max_feature_nodes: how many features get rows (all active features when None); the rest are
        chosen by estimated influence on the targets, refreshed every `update_interval` batches.
    batch_size: targets per backward pass.
    dtype / device: move the model there first (the graph itself is always float32 on the CPU).
    memory_limit: bytes the run may use; default: what the device has available.
    strategy: "vmap" (one forward, batched backward), "expand" (batch-expanded forward), or
        "auto" (vmap, falling back to expand if an operation has no batching rule).
    """
    _check_settings(max_feature_nodes, batch_size, update_interval, strategy)
    if dtype is not None or device is not None:
        model.to(device=device, dtype=dtype)
    tokens = model.tokenize(prompt)
    with torch.no_grad():
        run = model.run(tokens)
    logit_targets = build_logit_targets(
        targets,
        last_logits=run.logits[-1],
        unembedding=unembedding_matrix(model.lm.hf_model),
        tokenizer=model.tokenizer,
        max_n_logits=max_n_logits,
        desired_logit_prob=desired_logit_prob,
    )
    compute_dtype = model.lm.dtype
    active = run.activations.coalesce().indices().t()
    n_active = int(active.shape[0])
    n_selected = n_active if max_feature_nodes is None else min(max_feature_nodes, n_active)
    chosen = "vmap" if strategy == "auto" else strategy
    # Checked before the decoder vectors are gathered: they are the largest allocation.
    _check_memory(model, run, active, n_selected + len(logit_targets), batch_size, chosen, memory_limit)
    sources = collect_sources(model.transcoders, run, compute_dtype)

    try:
        rows, row_nodes = _compute_all_rows(
            model, run, sources, logit_targets, n_selected, batch_size, update_interval, chosen, progress
        )
    except RuntimeError as exc:
        if strategy != "auto" or not _is_batching_failure(exc):
            raise
        rows, row_nodes = _compute_all_rows(
            model, run, sources, logit_targets, n_selected, batch_size, update_interval, "expand", progress
        )
        chosen = "expand"
    settings = {
        "max_n_logits": max_n_logits,
        "desired_logit_prob": desired_logit_prob,
        "max_feature_nodes": max_feature_nodes,
        "batch_size": batch_size,
        "update_interval": update_interval,
        "dtype": str(compute_dtype).replace("torch.", ""),
        "strategy": chosen,
    }
    adjacency, selected = _keep_selected(rows, row_nodes, sources, len(logit_targets))
    del rows  # the full row buffer is no longer needed; free it before building the graph
    return _assemble_graph(model, tokens, sources, logit_targets, adjacency, selected, settings)


def _check_settings(max_feature_nodes, batch_size, update_interval, strategy) -> None:
    if max_feature_nodes is not None and max_feature_nodes < 0:
        raise AttributionError(f"max_feature_nodes must be ≥ 0 or None, got {max_feature_nodes}")
    if batch_size < 1:
        raise AttributionError(f"batch_size must be ≥ 1, got {batch_size}")
    if update_interval < 1:
        raise AttributionError(f"update_interval must be ≥ 1, got {update_interval}")
    if strategy not in STRATEGIES:
        raise AttributionError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")


def _is_batching_failure(exc: RuntimeError) -> bool:
    text = str(exc).lower()
    return "vmap" in text or "batching rule" in text or "batched" in text


def _check_memory(model, run, active, n_rows, batch_size, strategy, memory_limit) -> None:
    config = model.lm.text_config
    n_layers, n_positions, d_model = run.errors.shape
    estimate = estimate_memory(
        n_layers=n_layers,
        n_positions=n_positions,
        d_model=d_model,
        n_heads=int(getattr(config, "num_attention_heads", getattr(config, "n_head", 1))),
        n_active=int(active.shape[0]),
        n_decoder_vectors=decoder_slots(active, n_positions, model.transcoders),
        n_rows=n_rows,
        batch_size=batch_size,
        forward_copies=1 if strategy == "vmap" else batch_size,
        dtype=model.lm.dtype,
    )
    check_memory(estimate, memory_limit, run.errors.device)


def _compute_all_rows(model, run, sources, logit_targets, n_selected, batch_size, update_interval, strategy, progress):
    """All rows in one preallocated `[n_logits + n_selected, n_columns]` buffer (logit rows first),
    and the node each row belongs to. Rows are written in place, never concatenated."""
    copies = 1 if strategy == "vmap" else batch_size

    def frozen_for(length: int):
        return model.frozen_forward(run.tokens, batch_size=copies, run=run, length=length)

    computer = RowComputer(frozen_for, sources, strategy)
    n_logits = len(logit_targets)
    buffer = torch.zeros(n_logits + n_selected, sources.n_columns)
    row_nodes = torch.cat([torch.arange(n_logits) + sources.n_columns, torch.zeros(n_selected, dtype=torch.long)])
    bar = tqdm(total=n_logits + n_selected, desc="attribution rows", unit="row", disable=not progress, leave=False)
    try:
        _logit_rows(computer, logit_targets, sources.n_positions, batch_size, buffer[:n_logits], bar)
        _feature_rows(model, computer, sources, buffer, row_nodes, logit_targets, n_selected, batch_size, update_interval, bar)
    finally:
        bar.close()
    return buffer, row_nodes


def _logit_rows(computer, logit_targets: LogitTargets, n_positions, batch_size, out: torch.Tensor, bar) -> None:
    for start in range(0, len(logit_targets), batch_size):
        vectors = logit_targets.vectors[start : start + batch_size]
        count = vectors.shape[0]
        injection = Injection(
            layers=torch.full((count,), LOGIT_LAYER, dtype=torch.long),
            positions=torch.full((count,), n_positions - 1, dtype=torch.long),
            vectors=vectors.to(computer.sources.errors.device),
        )
        out[start : start + count] = computer.rows(injection).cpu()
        bar.update(count)


def _feature_rows(model, computer, sources, buffer, row_nodes, logit_targets, n_selected, batch_size, update_interval, bar) -> None:
    """Fill the feature part of `buffer` (after the logit rows) and of `row_nodes`."""
    n_active = sources.n_active
    n_logits = len(logit_targets)
    if n_selected == 0:
        return
    if n_selected == n_active:
        order = torch.arange(n_active)
        row_nodes[n_logits:] = order
        _rows_for(model, computer, sources, order, batch_size, buffer[n_logits:], bar)
        return
    # Layer of every node in [columns | logits]; errors and tokens never own a row.
    node_layers = torch.full((sources.n_columns + n_logits,), model.n_layers, dtype=torch.long)
    node_layers[:n_active] = sources.active_features[:, 0]
    filled = n_logits
    while filled < n_logits + n_selected:
        influence = partial_influence(buffer[:filled], row_nodes[:filled], logit_targets.probabilities,
                                      sources.n_columns, node_layers[row_nodes[:filled]])
        count = min(update_interval * batch_size, n_logits + n_selected - filled)
        chosen = next_features(influence, n_active, row_nodes[n_logits:filled], count)
        row_nodes[filled : filled + count] = chosen
        _rows_for(model, computer, sources, chosen, batch_size, buffer[filled : filled + count], bar)
        filled += count


def _rows_for(model, computer, sources: AttributionSources, features: torch.Tensor, batch_size, out: torch.Tensor, bar) -> None:
    """Write the rows of `features` into `out` (row i ↔ features[i]), computed in causal-cone order."""
    order = _cone_order(sources.active_features[features], computer.lengths, sources.n_layers)
    device = sources.errors.device
    for start in range(0, features.numel(), batch_size):
        slots = order[start : start + batch_size]
        batch = features[slots]
        layers = sources.active_features[batch, 0]
        positions = sources.active_features[batch, 1]
        vectors = _encoder_rows(model.transcoders, sources.active_features[batch], device, sources.errors.dtype)
        out[slots] = computer.rows(Injection(layers.to(device), positions.to(device), vectors)).cpu()
        bar.update(batch.numel())


def _cone_order(features: torch.Tensor, lengths: list[int], n_layers: int) -> torch.Tensor:
    """Visit order grouping targets by prefix bucket, then layer: batches then share a short
    prefix and a shallow backward pass (both shrink the work per row)."""
    key = bucket_of(features[:, 1], lengths) * n_layers + features[:, 0]
    return torch.argsort(key, stable=True)


def _encoder_rows(transcoders, features: torch.Tensor, device, dtype) -> torch.Tensor:
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


def _assemble_graph(model, tokens, sources, logit_targets, adjacency, selected, settings):
    """The `Graph` record of one attribution run."""
    input_ids = tokens.detach().cpu().long()
    tokenizer = model.tokenizer
    return Graph(
        input_ids=input_ids,
        tokens=token_display_strings(tokenizer, input_ids.tolist()),
        prompt=tokenizer.decode(input_ids.tolist()),
        active_features=sources.active_features.cpu().long(),
        activation_values=sources.activation_values.cpu(),
        selected_features=selected.long(),
        logit_token_ids=logit_targets.token_ids,
        logit_tokens=list(logit_targets.labels),
        logit_probabilities=logit_targets.probabilities,
        adjacency=adjacency,
        n_layers=sources.n_layers,
        vocab_size=int(model.lm.vocab_size),
        model_name=model.lm.name,
        transcoder_scan=model.transcoders.scan,
        transcoder_kind=model.transcoders.kind,
        settings=settings,
    )
