"""`attribute(model, prompt, ...) -> Graph`: the attribution graph of one prompt.

Phases: (1) a clean run gives active features, errors and the logits; (2) logit targets are
resolved; (3) a memory plan is checked before anything large is allocated; (4) rows are computed
by batched backward passes through the frozen model — logit rows first, then feature rows chosen
by influence; (5) the rows are assembled into a `Graph` whose columns keep only the features that
got rows. `docs/algorithm.md` gives the definitions followed here, `docs/long-prompts.md` both
engines' memory.

Two engines compute the same graph: "compact" (default: memory linear in the prompt, see
`compact.py`) and "dense" (the earlier engine, `dense.py`: every row over every active feature).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from circuit_atlas.attribution.compact import trace_compact
from circuit_atlas.attribution.context import Engine, Settings, Strategy, Trace, TraceResult
from circuit_atlas.attribution.dense import trace_dense
from circuit_atlas.attribution.memory import plan_clean_run
from circuit_atlas.attribution.targets import TargetSpec, build_logit_targets
from circuit_atlas.errors import AttributionError
from circuit_atlas.graph import Graph
from circuit_atlas.models.language_model import unembedding_matrix
from circuit_atlas.models.token_text import token_display_strings

if TYPE_CHECKING:
    from circuit_atlas.replacement import ReplacementModel

STRATEGIES: tuple[Strategy, ...] = ("auto", "vmap", "expand")
ENGINES: tuple[Engine, ...] = ("compact", "dense")


def attribute(
    model: "ReplacementModel",
    prompt: str | Sequence[int] | torch.Tensor,
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
    strategy: Strategy = "auto",
    engine: Engine = "compact",
    progress: bool = True,
) -> "Graph":
    """Trace the attribution graph of `prompt` through `model` (a `ReplacementModel`).

    targets: None for the most likely next tokens (until their probability sums to
        `desired_logit_prob`, at most `max_n_logits`); or a list of token strings, token ids,
        `CustomTarget` directions and `LogitDifference` pairs.
    max_feature_nodes: how many features get rows (all active features when None); the rest are
        chosen by estimated influence on the targets, refreshed every `update_interval` batches.
        Long prompts need a budget: the graph has `rows × (nodes + (L+1)·P)` entries.
    batch_size: targets per backward pass.
    dtype / device: move the model there first (the graph itself is always float32 on the CPU).
    memory_limit: bytes the run may use; default: what the device has available.
    strategy: "vmap" (one forward, batched backward), "expand" (batch-expanded forward), or
        "auto" (vmap, falling back to expand if an operation has no batching rule).
    engine: "compact" (memory linear in the prompt length) or "dense" (the earlier engine: all
        columns of every row in memory); both give the same graph.
    """
    settings = Settings(max_n_logits=max_n_logits, desired_logit_prob=desired_logit_prob,
                        max_feature_nodes=max_feature_nodes, batch_size=batch_size,
                        update_interval=update_interval, strategy=strategy, engine=engine,
                        memory_limit=memory_limit, progress=progress)
    _check_settings(settings)
    if dtype is not None or device is not None:
        model.to(device=device, dtype=dtype)
    tokens = model.tokenize(prompt)
    compact = engine == "compact"
    if compact:
        plan_clean_run(model, int(tokens.shape[0])).check(memory_limit, model.lm.device)
    with torch.no_grad():
        run = model.run(tokens, compact=compact)
    logit_targets = build_logit_targets(
        targets,
        last_logits=run.logits[-1],
        unembedding=unembedding_matrix(model.lm.hf_model),
        tokenizer=model.tokenizer,
        max_n_logits=max_n_logits,
        desired_logit_prob=desired_logit_prob,
    )
    activations = run.activations.coalesce()
    trace = Trace(model, run, logit_targets, activations.indices().t().contiguous(), activations.values(), settings)
    result = _run_engine(trace)
    return _assemble_graph(trace, tokens, result)


def _run_engine(trace: Trace) -> TraceResult:
    engine = trace_compact if trace.settings.engine == "compact" else trace_dense
    strategy = trace.settings.strategy
    try:
        return engine(trace, "vmap" if strategy == "auto" else strategy)
    except RuntimeError as exc:
        if strategy != "auto" or not _is_batching_failure(exc):
            raise
        return engine(trace, "expand")


def _check_settings(settings: Settings) -> None:
    if settings.max_feature_nodes is not None and settings.max_feature_nodes < 0:
        raise AttributionError(f"max_feature_nodes must be ≥ 0 or None, got {settings.max_feature_nodes}")
    if settings.batch_size < 1:
        raise AttributionError(f"batch_size must be ≥ 1, got {settings.batch_size}")
    if settings.update_interval < 1:
        raise AttributionError(f"update_interval must be ≥ 1, got {settings.update_interval}")
    if settings.strategy not in STRATEGIES:
        raise AttributionError(f"strategy must be one of {STRATEGIES}, got {settings.strategy!r}")
    if settings.engine not in ENGINES:
        raise AttributionError(f"engine must be one of {ENGINES}, got {settings.engine!r}")


def _is_batching_failure(exc: RuntimeError) -> bool:
    text = str(exc).lower()
    return "vmap" in text or "batching rule" in text or "batched" in text


def _assemble_graph(trace: Trace, tokens: torch.Tensor, result: TraceResult) -> "Graph":
    """The `Graph` record of one attribution run."""
    model, settings = trace.model, trace.settings
    input_ids = tokens.detach().cpu().long()
    tokenizer = model.tokenizer
    recorded = {
        "max_n_logits": settings.max_n_logits,
        "desired_logit_prob": settings.desired_logit_prob,
        "max_feature_nodes": settings.max_feature_nodes,
        "batch_size": settings.batch_size,
        "update_interval": settings.update_interval,
        "dtype": str(trace.compute_dtype).replace("torch.", ""),
        "strategy": result.strategy,
        "engine": settings.engine,
        **result.facts,
    }
    return Graph(
        input_ids=input_ids,
        tokens=token_display_strings(tokenizer, input_ids.tolist()),
        prompt=tokenizer.decode(input_ids.tolist()),
        active_features=trace.active.cpu().long(),
        activation_values=trace.activation_values.float().cpu(),
        selected_features=result.selected.long(),
        logit_token_ids=trace.logit_targets.token_ids,
        logit_tokens=list(trace.logit_targets.labels),
        logit_probabilities=trace.logit_targets.probabilities,
        adjacency=result.adjacency,
        n_layers=trace.n_layers,
        vocab_size=int(model.lm.vocab_size),
        model_name=model.lm.name,
        transcoder_scan=model.transcoders.scan,
        transcoder_kind=model.transcoders.kind,
        settings=recorded,
    )
