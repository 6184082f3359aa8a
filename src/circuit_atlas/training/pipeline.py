"""End-to-end jobs: train transcoders for a model on a corpus, or evaluate a transcoder set.

This is what `circuit-atlas train` / `eval-transcoders` run, kept out of the CLI so notebooks
and scripts get the same behaviour (held-out split, window layout, cache, export, evaluation)
from Python.

Output directory of a training job (with several `seeds`, one such folder per seed,
`<out>/seed-<s>/`, plus `<out>/seeds.json` comparing them):
  checkpoint/        resumable training state (safetensors + JSON)
  metrics.jsonl      training metrics every --log-every steps, evaluations every --eval-every,
                     and the final export check
  transcoders/       the trained set in circuit-atlas's native format (partial with --layers)
  circuit_tracer/    the same set in circuit-tracer's format (config.yaml + safetensors)
  best/              with --keep-best: the best state by the held-out metric (exported instead)
  eval.json          final evaluation on held-out text (when the corpus has enough of it)
  summary.json       what was trained and how well: windows, settings, throughput, export check
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from circuit_atlas.io import distributed as dist
from circuit_atlas.io.atomic import atomic_write_json
from circuit_atlas.io.corpus import Corpus, open_corpus
from circuit_atlas.training.cache import (CACHE_CONFIG, CachedActivationSource,
                                          build_activation_cache, read_cache_config)
from circuit_atlas.training.config import ArchitectureConfig, OptimConfig, to_json_dict
from circuit_atlas.models import load_language_model
from circuit_atlas.training.end_to_end import EndToEndLoss
from circuit_atlas.training.errors import TrainingConfigError, TrainingDataError
from circuit_atlas.training.evaluate import EvalReport, evaluate_transcoders
from circuit_atlas.training.export import (circuit_tracer_obstacle, export_transcoders,
                                           to_transcoders)
from circuit_atlas.training.fidelity import ExportFidelity
from circuit_atlas.training.init import BaseSet, base_initializer, check_compatible, load_base_set
from circuit_atlas.training.seeds import SharedBatches, run_in_lockstep
from circuit_atlas.training.selection import check_layers, merge_layer_choices, parse_hooks
from circuit_atlas.training.streaming import (WINDOW_MODES, ModelActivationSource, TokenWindows,
                                              padding_id, window_batches)
from circuit_atlas.training.trainer import TrainResult, Trainer
from circuit_atlas.training.windows import (WindowChoice, check_corpus_feeds_a_step,
                                            choose_windows)
from circuit_atlas.transcoders import load_transcoders

DEFAULT_INPUT_HOOK = "hook_resid_mid"
DEFAULT_OUTPUT_HOOK = "hook_mlp_out"
DEFAULT_CONTEXT_LENGTH = 128
SUMMARY_FILE = "summary.json"


@dataclass
class TrainJob:
    """Everything `circuit-atlas train` needs; defaults mirror the CLI's.

    `model` is recorded in the exported sets exactly as given ("demo", a hub id as typed).
    `layers` = [] trains every layer; `context_length` None is 128, or the model's maximum
    positions when that is smaller; `windows` (the layout, `--layout`) "auto" lets
    `choose_windows` ask the model.
    """

    model: str
    corpus: str
    kind: str
    n_features: int | None
    out_dir: Path
    activation: str = "jumprelu"
    k: int | None = None
    input_hook: str = DEFAULT_INPUT_HOOK
    output_hook: str = DEFAULT_OUTPUT_HOOK
    layers: list[int] = field(default_factory=list)
    text_field: str = "text"
    context_length: int | None = None
    windows: str = "auto"
    model_batch_size: int = 8
    buffer_tokens: int = 65536
    holdout_every: int = 20
    eval_windows: int = 32
    eval_every: int | None = None
    keep_best: str | None = None
    seeds: list[int] = field(default_factory=list)
    init_from: str | None = None
    kl_windows: int = 8
    normalize_decoder: bool | None = None
    cache_dir: Path | None = None
    cache_tokens: int | None = None
    device: str | None = None
    dtype: str | None = None
    resume: bool = True
    circuit_tracer: bool = True
    progress: bool = True
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class SeedResult:
    seed: int
    out_dir: Path
    step: int
    exported: dict[str, Path]
    evaluation: EvalReport | None
    fidelity: ExportFidelity | None
    tokens_per_second: float | None
    best_step: int | None = None


@dataclass
class JobResult:
    step: int
    exported: dict[str, Path]
    evaluation: EvalReport | None
    fidelity: ExportFidelity | None = None
    windows: WindowChoice | None = None
    context_length: int | None = None
    layers: list[int] = field(default_factory=list)
    tokens_per_second: float | None = None
    seeds: list[SeedResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_job(job: TrainJob) -> None:
    """Reject bad arguments before loading any model (the dimensions are placeholders)."""
    if job.n_features is None and job.init_from is None:
        raise TrainingConfigError("--features is required (or --init-from a set to take it "
                                  "from)")
    if job.n_features is not None:
        ArchitectureConfig(kind=job.kind, n_layers=1, d_model=1, n_features=job.n_features,
                           activation=job.activation, k=job.k).validate()
    job.optim.validate()
    for name in ("model_batch_size", "buffer_tokens", "holdout_every", "eval_windows",
                 "kl_windows"):
        value = getattr(job, name)
        if not isinstance(value, int) or value <= 0:
            raise TrainingConfigError(f"--{name.replace('_', '-')} must be a positive integer, "
                                      f"got {value!r}")
    if job.context_length is not None and (not isinstance(job.context_length, int)
                                           or job.context_length < 2):
        raise TrainingConfigError(f"--context-length must be at least 2, got "
                                  f"{job.context_length!r}")
    if job.holdout_every < 2:
        raise TrainingConfigError(f"--holdout-every must be at least 2, got {job.holdout_every}")
    if job.windows not in (*WINDOW_MODES, "auto"):
        raise TrainingConfigError(f"--layout must be auto, packed or documents, got "
                                  f"{job.windows!r}")
    if len(set(job.seeds)) != len(job.seeds):
        raise TrainingConfigError(f"--seeds repeats a seed: {job.seeds}")
    hooks = parse_hooks(job.input_hook, job.output_hook)
    layers = merge_layer_choices(job.layers, hooks.layers)
    if job.kind == "clt" and layers:
        raise TrainingConfigError("--layers: a cross-layer transcoder couples every layer of "
                                  "the model; choose layers with --kind plt or skip")


def run_training_job(job: TrainJob) -> JobResult:
    """Train (one seed or several in lockstep), export, check the export, evaluate."""
    check_job(job)
    hooks = parse_hooks(job.input_hook, job.output_hook)
    base = load_base_set(job.init_from) if job.init_from is not None else None
    n_features = job.n_features if job.n_features is not None else base.n_features
    dist.init_from_environment()
    device = _rank_device(job.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    lm = load_language_model(job.model, device=device, dtype=job.dtype)
    lm.check_hooks(hooks.input_hook, hooks.output_hook)
    layers = check_layers(merge_layer_choices(job.layers, hooks.layers), lm.n_layers, job.model)
    notes: list[str] = []
    context_length = fit_context_length(job.context_length, lm.max_positions, job.model, notes)
    arch = ArchitectureConfig(kind=job.kind, n_layers=len(layers), d_model=lm.d_model,
                              n_features=n_features, activation=job.activation, k=job.k,
                              **_arch_overrides(job)).validate()
    if base is not None:
        check_compatible(base, arch, n_model_layers=lm.n_layers, layers=layers,
                         input_hook=hooks.input_hook, output_hook=hooks.output_hook)
    train_part, held_out = open_corpus(job.corpus, text_field=job.text_field).split(
        job.holdout_every)
    skip = max(1, lm.n_zeroed_positions)
    first_mode = "packed" if job.windows == "auto" else job.windows
    check_corpus_feeds_a_step(train_part, lm.tokenizer, context_length, first_mode,
                              job.optim.batch_size // dist.world_size(), skip,
                              world_size=dist.world_size())
    windows = choose_windows(lm, train_part, context_length, job.windows,
                             batch_size=job.model_batch_size)
    if windows.mode != first_mode:
        check_corpus_feeds_a_step(train_part, lm.tokenizer, context_length, windows.mode,
                                  job.optim.batch_size // dist.world_size(), skip,
                                  world_size=dist.world_size())
    source = _activation_source(job, lm, train_part, context_length, windows.mode, layers)
    eval_batches = held_out_batches(lm, held_out, context_length, job.eval_windows,
                                    job.model_batch_size, mode=windows.mode)
    context = _RunContext(job=job, lm=lm, input_hook=hooks.input_hook,
                          output_hook=hooks.output_hook, layers=layers,
                          context_length=context_length, windows=windows,
                          eval_batches=eval_batches, base=base, train_part=train_part)
    seeds = job.seeds or [job.optim.seed]
    if len(seeds) == 1:
        trainer = context.trainer(source, seeds[0], Path(job.out_dir))
        outcomes = [(seeds[0], Path(job.out_dir), trainer, trainer.run(resume=job.resume))]
    else:
        shared = SharedBatches(source)
        folders = [Path(job.out_dir) / f"seed-{seed}" for seed in seeds]
        trainers = [context.trainer(shared.consumer(), seed, folder)
                    for seed, folder in zip(seeds, folders)]
        results = run_in_lockstep(trainers, resume=job.resume, progress=job.progress)
        outcomes = list(zip(seeds, folders, trainers, results))
    seed_results = [context.finish(seed, folder, trainer, result)
                    for seed, folder, trainer, result in outcomes]
    if len(seeds) > 1 and dist.is_main():
        _write_seed_table(Path(job.out_dir), seed_results)
    dist.barrier()
    first = seed_results[0]
    if not eval_batches:
        notes.append(f"the held-out part of {job.corpus} holds no complete window; skipped the "
                     "loss-recovered evaluation")
    notes.extend(context.notes)
    return JobResult(first.step, first.exported, first.evaluation, first.fidelity, windows,
                     context_length, layers, first.tokens_per_second, seed_results, notes)


@dataclass
class _RunContext:
    """What every seed's trainer and export share (settled once, before any seed trains, so that
    seeds run in lockstep differ only in their seed)."""

    job: TrainJob
    lm: Any
    input_hook: str
    output_hook: str
    layers: list[int]
    context_length: int
    windows: WindowChoice
    eval_batches: list
    base: BaseSet | None
    train_part: Corpus
    notes: list[str] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        """Whether only some of the model's layers are trained (the set is then a partial one)."""
        return self.layers != list(range(self.lm.n_layers))

    def arch(self, n_features: int) -> ArchitectureConfig:
        job = self.job
        return ArchitectureConfig(kind=job.kind, n_layers=len(self.layers),
                                  d_model=self.lm.d_model, n_features=n_features,
                                  activation=job.activation, k=job.k, **_arch_overrides(job))

    def evaluate(self, stack, *, progress: bool = False) -> EvalReport:
        tc = to_transcoders(stack, input_hook=self.input_hook, output_hook=self.output_hook)
        return evaluate_transcoders(self.lm, tc.to(self.lm.device), self.eval_batches,
                                    progress=progress, layers=self.layers)

    def evaluator(self, stack) -> dict[str, Any]:
        report = self.evaluate(stack)
        return {"ce_original": report.ce_original, "ce_replacement": report.ce_replacement,
                "ce_zero_ablation": report.ce_zero_ablation,
                "loss_recovered": report.loss_recovered,
                "fvu": sum(r.fvu for r in report.layers) / len(report.layers)}

    def trainer(self, source, seed: int, out_dir: Path) -> Trainer:
        job = self.job
        n_features = job.n_features if job.n_features is not None else self.base.n_features
        optim = job.optim if seed == job.optim.seed else _with_seed(job.optim, seed)
        end_to_end = None
        if optim.kl_coefficient > 0:
            end_to_end = EndToEndLoss(self.lm, self.train_part, input_hook=self.input_hook,
                                      output_hook=self.output_hook, layers=self.layers,
                                      context_length=self.context_length,
                                      windows=self.windows.mode, n_windows=job.kl_windows,
                                      rank=dist.rank(), world_size=dist.world_size())
        metadata = {"model": self.lm.name, "corpus": str(job.corpus),
                    "input_hook": self.input_hook, "output_hook": self.output_hook,
                    "layers": self.layers, "windows": self.windows.mode,
                    "context_length": self.context_length, "init_from": job.init_from}
        return Trainer(self.arch(n_features), optim, source, out_dir=out_dir,
                       device=self.lm.device, progress=job.progress and len(job.seeds) <= 1,
                       metadata=metadata,
                       evaluator=self.evaluator if self.eval_batches else None,
                       eval_every=job.eval_every, keep_best=job.keep_best,
                       end_to_end=end_to_end,
                       initializer=(base_initializer(self.base, self.layers)
                                    if self.base is not None else None))

    def finish(self, seed: int, out_dir: Path, trainer: Trainer,
               result: TrainResult) -> SeedResult:
        """Export, evaluate and summarise one seed's run (rank 0)."""
        job = self.job
        exported: dict[str, Path] = {}
        report = None
        if dist.is_main():
            base = self.base.layers if self.base is not None else None
            exported = export_transcoders(
                result.stack, out_dir, input_hook=self.input_hook,
                output_hook=self.output_hook, model_name=job.model,
                circuit_tracer=job.circuit_tracer, layers=self.layers,
                n_model_layers=self.lm.n_layers, base=base if self.partial else None)
            if job.circuit_tracer and "circuit_tracer" not in exported:
                reason = circuit_tracer_obstacle(
                    to_transcoders(result.stack, input_hook="in", output_hook="out"),
                    self.partial and base is None)
                self._note(f"no circuit-tracer copy: its format cannot hold this set ({reason})")
            if self.eval_batches:
                report = self.evaluate(result.stack, progress=job.progress)
                atomic_write_json(out_dir / "eval.json", report.to_json())
            _write_summary(out_dir, self, trainer, result, report)
        return SeedResult(seed, out_dir, result.step, exported, report, result.fidelity,
                          trainer.tokens_per_second, result.best_step)

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def fit_context_length(requested: int | None, max_positions: int | None, model: str,
                       notes: list[str] | None = None) -> int:
    """The window length: the request (default 128), clamped to the model's positions. A
    request beyond them is an error; the default shrinks with a note."""
    if requested is not None:
        if max_positions is not None and requested > max_positions:
            raise TrainingConfigError(
                f"--context-length {requested} exceeds the {max_positions} positions of model "
                f"{model}")
        return requested
    if max_positions is not None and max_positions < DEFAULT_CONTEXT_LENGTH:
        if notes is not None:
            notes.append(f"model {model} has {max_positions} positions: windows hold at most "
                         f"{max_positions} tokens (default {DEFAULT_CONTEXT_LENGTH})")
        return max_positions
    return DEFAULT_CONTEXT_LENGTH


def _arch_overrides(job: TrainJob) -> dict[str, Any]:
    """Decoder normalisation only when asked for (a set to start from keeps its own decoder
    scale unless it is)."""
    return {} if job.normalize_decoder is None else {"normalize_decoder": job.normalize_decoder}


def _with_seed(optim: OptimConfig, seed: int) -> OptimConfig:
    return replace(optim, seed=seed)


def _rank_device(device: str) -> str:
    """Under torchrun each rank takes its own GPU (`cuda` → `cuda:<LOCAL_RANK>`)."""
    if device == "cuda" and dist.is_distributed():
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return device


def _activation_source(job: TrainJob, lm, corpus: Corpus, context_length: int, windows: str,
                       layers: list[int]):
    seed, rank, world = job.optim.seed, dist.rank(), dist.world_size()
    hooks = parse_hooks(job.input_hook, job.output_hook)

    def stream() -> ModelActivationSource:
        return ModelActivationSource(
            lm, corpus, input_hook=hooks.input_hook, output_hook=hooks.output_hook,
            context_length=context_length, model_batch_size=job.model_batch_size,
            buffer_tokens=job.buffer_tokens, seed=seed, rank=rank, world_size=world,
            windows=windows, layers=layers)

    if job.cache_dir is None:
        return stream()
    cache = Path(job.cache_dir)
    wanted = {"model": lm.name, "input_hook": hooks.input_hook,
              "output_hook": hooks.output_hook, "corpus": str(job.corpus),
              "context_length": context_length, "windows": windows, "layers": layers}
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
                     batch_size: int, *, mode: str = "packed") -> list:
    """Up to `max_windows` full windows' worth of tokens from one pass over `corpus`, as `[B, P]`
    batches (packed) or `(tokens, mask)` padded batches (documents: as many documents as fill
    `max_windows × context_length` tokens); empty when the corpus holds less than one window."""
    windows = TokenWindows(corpus, lm.tokenizer, context_length, mode=mode)
    rows: list[torch.Tensor] = []
    budget, used = max_windows * context_length, 0
    try:
        while used < budget:
            window = windows.next_window()
            if windows.epoch > 0:
                break  # do not repeat documents
            rows.append(window)
            used += context_length if mode == "packed" else int(window.numel())
    except TrainingDataError:
        return []
    if mode == "packed":
        return [torch.stack(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]
    return window_batches(rows, padding_id(lm.tokenizer), batch_size * context_length)


def _write_summary(out_dir: Path, context: _RunContext, trainer: Trainer, result: TrainResult,
                   report: EvalReport | None) -> None:
    summary = {
        "model": context.job.model, "layers": context.layers,
        "context_length": context.context_length, "windows": context.windows.to_json(),
        "architecture": to_json_dict(trainer.arch), "optim": to_json_dict(trainer.optim),
        "steps": result.step, "tokens": result.step * trainer.optim.batch_size,
        "tokens_per_second": trainer.tokens_per_second,
        "final_training_metrics": result.metrics, "best_step": result.best_step,
        "export_check": None if result.fidelity is None else result.fidelity.to_json(),
        "held_out": None if report is None else report.to_json(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_json(out_dir / SUMMARY_FILE, summary)


def _write_seed_table(out_dir: Path, seeds: list[SeedResult]) -> None:
    rows = []
    for item in seeds:
        report = item.evaluation
        rows.append({
            "seed": item.seed, "folder": str(item.out_dir),
            "held_out_fvu": None if report is None else
            sum(r.fvu for r in report.layers) / len(report.layers),
            "loss_recovered": None if report is None else report.loss_recovered,
            "export_gap": None if item.fidelity is None else item.fidelity.relative_gap})
    atomic_write_json(out_dir / "seeds.json", rows)


def run_eval_job(model: str, transcoders: str, corpus: str, *, text_field: str = "text",
                 context_length: int = 128, windows: int = 64, batch_size: int = 8,
                 device: str | None = None, dtype: str | None = None,
                 progress: bool = True, lazy_encoder: bool = False,
                 window_mode: str = "auto") -> EvalReport:
    """Evaluate any transcoder set (hub id or directory) on a corpus."""
    for name, value in (("--context-length", context_length), ("--windows", windows),
                        ("--batch-size", batch_size)):
        if value <= 0:
            raise TrainingConfigError(f"{name} must be a positive integer, got {value}")
    lm = load_language_model(model, device=device, dtype=dtype)
    tc = load_transcoders(transcoders, device=lm.device, dtype=lm.dtype, lazy_encoder=lazy_encoder)
    text = open_corpus(corpus, text_field=text_field)
    mode = choose_windows(lm, text, context_length, window_mode).mode
    batches = held_out_batches(lm, text, context_length, windows, batch_size, mode=mode)
    if not batches:
        raise TrainingDataError(f"corpus {corpus} holds fewer tokens than one context window "
                                f"({context_length}); use more text or a smaller --context-length")
    return evaluate_transcoders(lm, tc, batches, progress=progress)


