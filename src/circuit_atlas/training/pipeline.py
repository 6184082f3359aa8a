"""End-to-end jobs: train transcoders for a model on a corpus, or evaluate a transcoder set.

This is what `circuit-atlas train` / `eval-transcoders` run, kept out of the CLI so notebooks
and scripts get the same behaviour (held-out split, cache, export, evaluation) from Python.

Output directory of a training job:
  checkpoint/        resumable training state (safetensors + JSON)
  metrics.jsonl      training metrics every --log-every steps, evaluations every --eval-every
  transcoders/       the trained set in circuit-atlas's native format
  circuit_tracer/    the same set in circuit-tracer's format (config.yaml + safetensors)
  eval.json          final evaluation on held-out text (when the corpus has enough of it)
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from circuit_atlas.io import distributed as dist
from circuit_atlas.training.cache import (CACHE_CONFIG, CachedActivationSource,
                                          build_activation_cache, read_cache_config)
from circuit_atlas.training.config import ArchitectureConfig, OptimConfig
from circuit_atlas.io.corpus import Corpus, open_corpus
from circuit_atlas.models import load_language_model
from circuit_atlas.training.errors import TrainingConfigError, TrainingDataError
from circuit_atlas.training.evaluate import EvalReport, evaluate_transcoders
from circuit_atlas.training.export import export_transcoders, to_transcoders
from circuit_atlas.training.streaming import ModelActivationSource, TokenWindows
from circuit_atlas.training.trainer import Trainer
from circuit_atlas.transcoders import load_transcoders

DEFAULT_INPUT_HOOK = "hook_resid_mid"
DEFAULT_OUTPUT_HOOK = "hook_mlp_out"


@dataclass
class TrainJob:
    """Everything `circuit-atlas train` needs; defaults mirror the CLI's."""

    model: str
    corpus: str
    kind: str
    n_features: int
    out_dir: Path
    activation: str = "jumprelu"
    k: int | None = None
    input_hook: str = DEFAULT_INPUT_HOOK
    output_hook: str = DEFAULT_OUTPUT_HOOK
    text_field: str = "text"
    context_length: int = 128
    model_batch_size: int = 8
    buffer_tokens: int = 65536
    holdout_every: int = 20
    eval_windows: int = 32
    eval_every: int | None = None
    cache_dir: Path | None = None
    cache_tokens: int | None = None
    device: str | None = None
    dtype: str | None = None
    resume: bool = True
    circuit_tracer: bool = True
    progress: bool = True
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class JobResult:
    step: int
    exported: dict[str, Path]
    evaluation: EvalReport | None


def check_job(job: TrainJob) -> None:
    """Reject bad arguments before loading any model (the dimensions are placeholders)."""
    ArchitectureConfig(kind=job.kind, n_layers=1, d_model=1, n_features=job.n_features,
                       activation=job.activation, k=job.k).validate()
    job.optim.validate()
    for name in ("context_length", "model_batch_size", "buffer_tokens", "holdout_every",
                 "eval_windows"):
        value = getattr(job, name)
        if not isinstance(value, int) or value <= 0:
            raise TrainingConfigError(f"--{name.replace('_', '-')} must be a positive integer, "
                                      f"got {value!r}")
    if job.holdout_every < 2:
        raise TrainingConfigError(f"--holdout-every must be at least 2, got {job.holdout_every}")


def run_training_job(job: TrainJob) -> JobResult:
    check_job(job)
    dist.init_from_environment()
    device = _rank_device(job.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    lm = load_language_model(job.model, device=device, dtype=job.dtype)
    lm.check_hooks(job.input_hook, job.output_hook)
    arch = ArchitectureConfig(kind=job.kind, n_layers=lm.n_layers, d_model=lm.d_model,
                              n_features=job.n_features, activation=job.activation,
                              k=job.k).validate()
    train_part, held_out = open_corpus(job.corpus, text_field=job.text_field).split(
        job.holdout_every)
    source = _activation_source(job, lm, train_part)
    eval_batches = held_out_batches(lm, held_out, job.context_length, job.eval_windows,
                                    job.model_batch_size)

    def evaluator(stack) -> dict[str, Any]:
        tc = to_transcoders(stack, input_hook=job.input_hook, output_hook=job.output_hook)
        report = evaluate_transcoders(lm, tc.to(lm.device), eval_batches, progress=False)
        return {"ce_original": report.ce_original, "ce_replacement": report.ce_replacement,
                "ce_zero_ablation": report.ce_zero_ablation,
                "loss_recovered": report.loss_recovered}

    trainer = Trainer(arch, job.optim, source, out_dir=job.out_dir, device=device,
                      progress=job.progress,
                      metadata={"model": lm.name, "corpus": str(job.corpus),
                                "input_hook": job.input_hook, "output_hook": job.output_hook},
                      evaluator=evaluator if eval_batches else None, eval_every=job.eval_every)
    result = trainer.run(resume=job.resume)
    exported: dict[str, Path] = {}
    report = None
    if dist.is_main():
        exported = export_transcoders(result.stack, job.out_dir, input_hook=job.input_hook,
                                      output_hook=job.output_hook, model_name=lm.name,
                                      circuit_tracer=job.circuit_tracer)
        if eval_batches:
            tc = to_transcoders(result.stack, input_hook=job.input_hook,
                                output_hook=job.output_hook).to(lm.device)
            report = evaluate_transcoders(lm, tc, eval_batches, progress=job.progress)
            (Path(job.out_dir) / "eval.json").write_text(json.dumps(report.to_json(), indent=1),
                                                         encoding="utf-8")
        else:
            print(f"note: the held-out part of {job.corpus} holds less than one context window; "
                  "skipped the loss-recovered evaluation", file=sys.stderr)
    dist.barrier()
    return JobResult(result.step, exported, report)


def _rank_device(device: str) -> str:
    """Under torchrun each rank takes its own GPU (`cuda` → `cuda:<LOCAL_RANK>`)."""
    import os

    if device == "cuda" and dist.is_distributed():
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return device


def _activation_source(job: TrainJob, lm, corpus: Corpus):
    seed, rank, world = job.optim.seed, dist.rank(), dist.world_size()

    def stream() -> ModelActivationSource:
        return ModelActivationSource(
            lm, corpus, input_hook=job.input_hook, output_hook=job.output_hook,
            context_length=job.context_length, model_batch_size=job.model_batch_size,
            buffer_tokens=job.buffer_tokens, seed=seed, rank=rank, world_size=world)

    if job.cache_dir is None:
        return stream()
    cache = Path(job.cache_dir)
    wanted = {"model": lm.name, "input_hook": job.input_hook, "output_hook": job.output_hook,
              "corpus": str(job.corpus), "context_length": job.context_length}
    if (cache / CACHE_CONFIG).exists():
        found = read_cache_config(cache).get("metadata", {})
        if found != wanted:
            raise TrainingDataError(
                f"activation cache {cache} was built for {found}, not {wanted}; use another "
                "--cache directory")
    elif dist.is_main():
        n_tokens = job.cache_tokens or job.optim.steps * job.optim.batch_size
        build_activation_cache(stream(), cache, n_tokens=n_tokens, metadata=wanted,
                               progress=job.progress)
    dist.barrier()
    return CachedActivationSource(cache, seed=seed, rank=rank, world_size=world)


def held_out_batches(lm, corpus: Corpus, context_length: int, max_windows: int,
                     batch_size: int) -> list[torch.Tensor]:
    """Up to `max_windows` token windows from one pass over `corpus`, as `[B, P]` batches;
    empty when the corpus holds less than one window."""
    windows = TokenWindows(corpus, lm.tokenizer, context_length)
    rows: list[torch.Tensor] = []
    try:
        while len(rows) < max_windows:
            window = windows.next_window()
            if windows.epoch > 0:
                break  # do not repeat documents
            rows.append(window)
    except TrainingDataError:
        return []
    return [torch.stack(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]


def run_eval_job(model: str, transcoders: str, corpus: str, *, text_field: str = "text",
                 context_length: int = 128, windows: int = 64, batch_size: int = 8,
                 device: str | None = None, dtype: str | None = None,
                 progress: bool = True, lazy_encoder: bool = False) -> EvalReport:
    """Evaluate any transcoder set (hub id or directory) on a corpus."""
    for name, value in (("--context-length", context_length), ("--windows", windows),
                        ("--batch-size", batch_size)):
        if value <= 0:
            raise TrainingConfigError(f"{name} must be a positive integer, got {value}")
    lm = load_language_model(model, device=device, dtype=dtype)
    tc = load_transcoders(transcoders, device=lm.device, dtype=lm.dtype, lazy_encoder=lazy_encoder)
    batches = held_out_batches(lm, open_corpus(corpus, text_field=text_field), context_length,
                               windows, batch_size)
    if not batches:
        raise TrainingDataError(f"corpus {corpus} holds fewer tokens than one context window "
                                f"({context_length}); use more text or a smaller --context-length")
    return evaluate_transcoders(lm, tc, batches, progress=progress)
