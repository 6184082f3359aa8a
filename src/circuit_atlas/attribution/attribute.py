"""`attribute(model, prompt, ...) -> Graph`: the attribution graph of one prompt.

Phases: (1) a clean run gives active features, errors and the logits; (2) logit targets are
resolved; (3) a memory estimate is checked before anything large is allocated; (4) one frozen
forward pass is built and logit rows, then feature rows, are computed by batched backward passes;
(5) the rows are assembled into a `Graph` whose columns keep only the features that got rows.
See `../shared/reference/attribution-algorithm.md` for the definitions followed here.
"""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from circuit_atlas.attribution.exploration import next_features, partial_influence
from circuit_atlas.attribution.memory import check_memory, estimate_memory
from circuit_atlas.attribution.rows import LOGIT_LAYER, Injection, RowComputer, bucket_of
from circuit_atlas.attribution.sources import AttributionSources, collect_sources
from circuit_atlas.attribution.targets import (
    LogitTargets,
    TargetSpec,
    build_logit_targets,
    unembedding_matrix,
)
from circuit_atlas.errors import AttributionError

STRATEGIES = ("auto", "vmap", "expand")


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
    sources = collect_sources(model.transcoders, run, compute_dtype)
    n_selected = sources.n_active if max_feature_nodes is None else min(max_feature_nodes, sources.n_active)
    chosen = "vmap" if strategy == "auto" else strategy
    _check_memory(model, sources, n_selected + len(logit_targets), batch_size, chosen, memory_limit)

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
    return _assemble_graph(model, tokens, sources, logit_targets, rows, row_nodes, settings)


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


def _check_memory(model, sources, n_rows, batch_size, strategy, memory_limit) -> None:
    config = model.lm.text_config
    estimate = estimate_memory(
        n_layers=sources.n_layers,
        n_positions=sources.n_positions,
        d_model=sources.errors.shape[-1],
        n_heads=int(getattr(config, "num_attention_heads", getattr(config, "n_head", 1))),
        n_active=sources.n_active,
        n_decoder_vectors=sum(group.valid.numel() for group in sources.decoder_groups),
        n_rows=n_rows,
        batch_size=batch_size,
        forward_copies=1 if strategy == "vmap" else batch_size,
        dtype=model.lm.dtype,
    )
    check_memory(estimate, memory_limit, sources.errors.device)


def _compute_all_rows(model, run, sources, logit_targets, n_selected, batch_size, update_interval, strategy, progress):
    copies = 1 if strategy == "vmap" else batch_size

    def frozen_for(length: int):
        return model.frozen_forward(run.tokens, batch_size=copies, run=run, length=length)

    computer = RowComputer(frozen_for, sources, strategy)
    n_logits = len(logit_targets)
    total_rows = n_logits + n_selected
    bar = tqdm(total=total_rows, desc="attribution rows", unit="row", disable=not progress, leave=False)
    try:
        logit_rows = _logit_rows(computer, logit_targets, sources.n_positions, batch_size, bar)
        feature_rows, visited = _feature_rows(
            model, computer, sources, logit_rows, logit_targets, n_selected, batch_size, update_interval, bar
        )
    finally:
        bar.close()
    rows = torch.cat([logit_rows, feature_rows]) if feature_rows.numel() else logit_rows
    logit_nodes = torch.arange(n_logits) + sources.n_columns
    return rows, torch.cat([logit_nodes, visited])


def _logit_rows(computer, logit_targets: LogitTargets, n_positions, batch_size, bar) -> torch.Tensor:
    parts = []
    for start in range(0, len(logit_targets), batch_size):
        vectors = logit_targets.vectors[start : start + batch_size]
        count = vectors.shape[0]
        injection = Injection(
            layers=torch.full((count,), LOGIT_LAYER, dtype=torch.long),
            positions=torch.full((count,), n_positions - 1, dtype=torch.long),
            vectors=vectors.to(computer.sources.errors.device),
        )
        parts.append(computer.rows(injection).cpu())
        bar.update(count)
    return torch.cat(parts)


def _feature_rows(model, computer, sources, logit_rows, logit_targets, n_selected, batch_size, update_interval, bar):
    n_active = sources.n_active
    empty = torch.zeros(0, sources.n_columns), torch.zeros(0, dtype=torch.long)
    if n_selected == 0:
        return empty
    if n_selected == n_active:
        order = torch.arange(n_active)
        return _rows_for(model, computer, sources, order, batch_size, bar), order
    visited = torch.zeros(0, dtype=torch.long)
    rows = torch.zeros(0, sources.n_columns)
    n_logits = len(logit_targets)
    logit_nodes = torch.arange(n_logits) + sources.n_columns
    while visited.numel() < n_selected:
        all_rows = torch.cat([logit_rows, rows])
        row_nodes = torch.cat([logit_nodes, visited])
        influence = partial_influence(all_rows, row_nodes, logit_targets.probabilities, sources.n_columns)
        count = min(update_interval * batch_size, n_selected - visited.numel())
        chosen = next_features(influence, n_active, visited, count)
        rows = torch.cat([rows, _rows_for(model, computer, sources, chosen, batch_size, bar)])
        visited = torch.cat([visited, chosen])
    return rows, visited


def _rows_for(model, computer, sources: AttributionSources, features: torch.Tensor, batch_size, bar) -> torch.Tensor:
    """Rows of `features`, returned in the order given; computed in causal-cone order."""
    order = _cone_order(sources.active_features[features], computer.lengths, sources.n_layers)
    parts = []
    device = sources.errors.device
    for start in range(0, features.numel(), batch_size):
        batch = features[order[start : start + batch_size]]
        layers = sources.active_features[batch, 0]
        positions = sources.active_features[batch, 1]
        vectors = _encoder_rows(model.transcoders, sources.active_features[batch], device, sources.errors.dtype)
        parts.append(computer.rows(Injection(layers.to(device), positions.to(device), vectors)).cpu())
        bar.update(batch.numel())
    rows = torch.cat(parts)
    restored = torch.empty_like(rows)
    restored[order] = rows
    return restored


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


def _assemble_graph(model, tokens, sources, logit_targets, rows, row_nodes, settings):
    """Keep the columns of features that got rows; order rows as [features ascending | logits]."""
    from circuit_atlas.graph import Graph

    n_logits = len(logit_targets)
    feature_nodes = row_nodes[n_logits:]
    order = torch.argsort(feature_nodes)
    selected = feature_nodes[order]
    feature_rows = rows[n_logits:][order]
    logit_rows = rows[:n_logits]
    keep_columns = torch.cat([selected, torch.arange(sources.n_active, sources.n_columns)])
    adjacency = torch.cat([feature_rows, logit_rows])[:, keep_columns].contiguous()
    input_ids = tokens.detach().cpu().long()
    tokenizer = model.tokenizer
    return Graph(
        input_ids=input_ids,
        tokens=[tokenizer.decode([int(i)]) for i in input_ids],
        prompt=tokenizer.decode(input_ids.tolist()),
        active_features=sources.active_features.cpu().long(),
        activation_values=sources.activation_values.cpu(),
        selected_features=selected.long(),
        logit_token_ids=logit_targets.token_ids,
        logit_tokens=list(logit_targets.labels),
        logit_probabilities=logit_targets.probabilities,
        adjacency=adjacency.float(),
        n_layers=sources.n_layers,
        vocab_size=int(model.lm.vocab_size),
        model_name=model.lm.name,
        transcoder_scan=model.transcoders.scan,
        transcoder_kind=model.transcoders.kind,
        settings=settings,
    )
