"""The training loop: Adam on the transcoder stack, schedules, metrics, checkpoints, DDP.

One `Trainer` serves PLT, skip and CLT stacks with any activation function; the loss it builds
depends on the activation (see `objective`). Under `torch.distributed` (launched by torchrun or
`torch.multiprocessing.spawn`) the stack is wrapped in DistributedDataParallel and every rank
trains on its slice of the global batch; all non-gradient state is reduced across ranks so the
replicas stay identical.

A run is `start` → `advance` per step → `result`; `run()` chains them, and `seeds.py` advances
several trainers in lockstep on shared batches. The last step *finalises* the stack: BatchTopK
gets its fitted per-feature thresholds and the exported set is checked against the trained one
(`fidelity.py`), before the final checkpoint is written.
"""

from __future__ import annotations

import inspect
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from circuit_atlas.training import checkpoint as ckpt
from circuit_atlas.io import distributed as dist
from circuit_atlas.training.activations import batch_threshold
from circuit_atlas.training.architecture import StackOutput, TranscoderStack
from circuit_atlas.training.best import BestKeeper
from circuit_atlas.training.config import (ArchitectureConfig, OptimConfig, architecture_from_dict,
                                           optim_from_dict, same_training, to_json_dict)
from circuit_atlas.training.errors import (TrainingConfigError, TrainingDataError,
                                           TrainingDivergedError)
from circuit_atlas.training.export import to_transcoders
from circuit_atlas.training.fidelity import ExportFidelity, export_fidelity
from circuit_atlas.training.identity import same_setting
from circuit_atlas.training.losses import (auxk_loss, l1_sparsity, preact_loss,
                                           reconstruction_loss, tanh_sparsity)
from circuit_atlas.training.metrics import DeadTracker, JsonlLog, MetricSums
from circuit_atlas.training.schedules import learning_rate, sparsity_coefficient
from circuit_atlas.training.source import ActivationSource
from circuit_atlas.training.thresholds import fit_feature_thresholds

LOG_FILE = "metrics.jsonl"
FIDELITY_BATCHES = 4


@dataclass
class TrainResult:
    stack: TranscoderStack
    step: int
    metrics: dict[str, Any] | None
    checkpoint: Path | None
    fidelity: ExportFidelity | None = None
    best_step: int | None = None


class Trainer:
    """Train a `TranscoderStack` on batches from an `ActivationSource`.

    `out_dir` (optional) receives `checkpoint/` and `metrics.jsonl`; with `resume=True` (default)
    an existing checkpoint there is continued, bit-for-bit as if never interrupted.
    `evaluator(stack) -> dict` (e.g. loss recovered on held-out text) runs on rank 0 every
    `eval_every` steps and at the end; its result is logged as `{"step", "eval"}` records. It
    must not touch global random state, so evaluating never changes the training trajectory.
    `keep_best` names an evaluator result ("fvu": lower is better, "loss_recovered": higher)
    whose best state is kept in `out_dir/best/` and returned as the result's stack.
    `end_to_end(stack) -> scalar` is the end-to-end loss (KL of the model's next-token
    distribution with the transcoders in place), weighted by `optim.kl_coefficient`.
    `initializer(stack)` overwrites the data-based starting weights of the layers it covers
    (fine-tuning an existing set); it runs after the normalisation scales are known.
    """

    def __init__(self, arch: ArchitectureConfig, optim: OptimConfig, source: ActivationSource,
                 *, out_dir: str | Path | None = None, device: str | torch.device | None = None,
                 progress: bool = True, metadata: dict[str, Any] | None = None,
                 evaluator: Callable[[TranscoderStack], dict[str, Any]] | None = None,
                 eval_every: int | None = None, keep_best: str | None = None,
                 end_to_end: Callable[[TranscoderStack], torch.Tensor] | None = None,
                 initializer: Callable[[TranscoderStack], None] | None = None) -> None:
        self.arch = arch.validate()
        self.optim = optim.validate().resolved(arch.n_features)
        self.source = source
        if (source.n_layers, source.d_model) != (arch.n_layers, arch.d_model):
            raise TrainingDataError(
                f"the activation source yields {source.n_layers} layers × d_model "
                f"{source.d_model}, but the transcoder was configured for {arch.n_layers} × "
                f"{arch.d_model}")
        self.rank, self.world_size = dist.rank(), dist.world_size()
        if self.optim.batch_size % (self.world_size * self.optim.grad_accumulation):
            raise TrainingConfigError(
                f"--batch-size {self.optim.batch_size} must be divisible by the number of "
                f"processes ({self.world_size}) × --grad-accumulation "
                f"({self.optim.grad_accumulation})")
        if self.optim.kl_coefficient > 0 and end_to_end is None:
            raise TrainingConfigError("--kl-coefficient needs the model: it is available in "
                                      "`circuit-atlas train` (run_training_job), not on bare "
                                      "activations")
        if self.optim.kl_coefficient > 0 and self.world_size > 1:
            raise TrainingConfigError("--kl-coefficient runs in one process (its model passes "
                                      "are not split across ranks); drop it or use one process")
        if keep_best is not None and (evaluator is None or eval_every is None):
            raise TrainingConfigError("--keep-best needs held-out evaluations (--eval-every and "
                                      "a corpus with held-out documents)")
        self.local_batch = self.optim.batch_size // self.world_size
        self.device = torch.device(device) if device is not None else _default_device()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress and dist.is_main()
        self.metadata = dict(metadata or {})
        self.evaluator, self.end_to_end, self.initializer = evaluator, end_to_end, initializer
        if eval_every is not None and eval_every <= 0:
            raise TrainingConfigError(f"--eval-every must be positive, got {eval_every}")
        self.eval_every = eval_every
        self.last_eval: dict[str, Any] | None = None
        self.stack = TranscoderStack(arch, seed=self.optim.seed).to(self.device)
        self.model: torch.nn.Module = self.stack
        if self.world_size > 1:
            self.model = _wrap_ddp(self.stack)
        self.optimizer = torch.optim.Adam(self.stack.parameters(), lr=self.optim.lr,
                                          betas=self.optim.adam_betas, eps=self.optim.adam_eps)
        self.dead = DeadTracker(arch.n_layers, arch.n_features, self.optim.dead_after_tokens,
                                self.device)
        self.best = BestKeeper(keep_best, self.out_dir) if keep_best is not None else None
        self.step = 0
        self.last_checkpoint_step: int | None = None
        self.metrics: dict[str, Any] | None = None
        self.fidelity: ExportFidelity | None = None
        self.log = JsonlLog(self.out_dir / LOG_FILE) if self.out_dir is not None else None
        self.amp = self.optim.mixed_precision == "bf16" or (
            self.optim.mixed_precision == "auto" and self.device.type == "cuda")
        self._bar: Any = None
        self._started_at: float | None = None

    # -- public -----------------------------------------------------------------------------
    def run(self, *, stop_after: int | None = None, resume: bool = True) -> TrainResult:
        """Train until `optim.steps` (or until step `stop_after`, to split a run in parts)."""
        end = self.start(resume=resume, stop_after=stop_after)
        try:
            while self.step < end:
                self.advance(end)
        finally:
            self.close_progress()
        return self.result()

    def start(self, *, resume: bool = True, stop_after: int | None = None) -> int:
        """Load a checkpoint or initialise from data; returns the step this run stops at."""
        found = ckpt.find_checkpoint(self.out_dir) if resume and self.out_dir else None
        if found is not None:
            self.load(found)
        elif self.step == 0:
            self.initialise_from_data()
        end = self.optim.steps if stop_after is None else min(stop_after, self.optim.steps)
        self._bar = tqdm(total=end, initial=self.step, disable=not self.progress,
                         desc="training", unit="step", dynamic_ncols=True)
        self._started_at, self._start_step = time.perf_counter(), self.step
        return end

    def advance(self, end: int) -> None:
        """One optimiser step with its logging, evaluation, finalisation and checkpoint."""
        out, target, losses = self.train_step()
        self.step += 1
        last = self.step == end
        if self.step % self.optim.log_every == 0 or last:
            self.metrics = self.log_metrics(out, target, losses)
            if self._bar is not None:
                self._bar.set_postfix(_postfix(self.metrics))
        if self.evaluator is not None and (last or (
                self.eval_every is not None and self.step % self.eval_every == 0)):
            self.evaluate()
        if self.step == self.optim.steps:
            self.finalize()
        if self.out_dir is not None and (self.step % self.optim.checkpoint_every == 0 or last):
            self.save()
        if self._bar is not None:
            self._bar.update(1)

    def close_progress(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def result(self) -> TrainResult:
        path = ckpt.find_checkpoint(self.out_dir) if self.out_dir is not None else None
        if self.fidelity is None and self.log is not None and self.step == self.optim.steps:
            self.fidelity = _logged_fidelity(self.log)  # a finished run, resumed
        stack, best_step = self.stack, None
        if self.best is not None and self.best.step is not None:
            stack, best_step = self.best.load(self.stack), self.best.step
        return TrainResult(stack, self.step, self.metrics, path, self.fidelity, best_step)

    @property
    def tokens_per_second(self) -> float | None:
        """Training throughput of this process's steps so far (data, model passes included)."""
        if self._started_at is None or self.step == self._start_step:
            return None
        seconds = time.perf_counter() - self._started_at
        return (self.step - self._start_step) * self.optim.batch_size / max(seconds, 1e-9)

    # -- setup --------------------------------------------------------------------------------
    @torch.no_grad()
    def initialise_from_data(self) -> None:
        """Per-layer scales so inputs and targets have mean squared norm d, b_dec at the mean
        normalised target (the best constant reconstruction) and, with `center_encoder`, an
        encoder bias that maps the mean input to pre-activation 0; from a few batches."""
        L, d = self.arch.n_layers, self.arch.d_model
        sq_in = torch.zeros(L, dtype=torch.float64, device=self.device)
        sq_out = torch.zeros_like(sq_in)
        sum_in = torch.zeros(L, d, dtype=torch.float64, device=self.device)
        sum_out = torch.zeros_like(sum_in)
        count = torch.zeros((), dtype=torch.float64, device=self.device)
        for _ in range(self.optim.normalization_batches):
            x, y = self._fetch()
            sq_in += x.double().pow(2).sum(-1).sum(0)
            sq_out += y.double().pow(2).sum(-1).sum(0)
            sum_in += x.double().sum(0)
            sum_out += y.double().sum(0)
            count += x.shape[0]
        for t in (sq_in, sq_out, sum_in, sum_out, count):
            dist.all_reduce(t, "sum")
        if self.optim.normalize:
            self.stack.input_scale.copy_((sq_in / count / d).sqrt().clamp_min(1e-12))
            self.stack.target_scale.copy_((sq_out / count / d).sqrt().clamp_min(1e-12))
        mean_target = sum_out / count / self.stack.target_scale.double()[:, None]
        self.stack.b_dec.copy_(mean_target.float())
        if self.arch.center_encoder:
            mean_input = (sum_in / count / self.stack.input_scale.double()[:, None]).float()
            self.stack.b_enc.copy_(-torch.einsum("lfd,ld->lf", self.stack.W_enc, mean_input))
        if self.arch.unit_decoder:
            self.stack.normalize_decoder_rows()
        if self.initializer is not None:  # after the data-based start: it may cover some layers
            self.initializer(self.stack)

    # -- one step -----------------------------------------------------------------------------
    def _fetch(self, n_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.source.next_batch(n_tokens or self.local_batch)
        return (x.to(self.device, torch.float32, non_blocking=True),
                y.to(self.device, torch.float32, non_blocking=True))

    def _normalise(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (x / self.stack.input_scale[None, :, None],
                y / self.stack.target_scale[None, :, None])

    def objective(self, out: StackOutput, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms of a (micro-)batch; their sum is minimised."""
        act, cfg = self.arch.activation, self.optim
        terms = {"reconstruction": reconstruction_loss(out.recon, target)}
        lam = sparsity_coefficient(self.step, cfg)
        if act == "jumprelu":
            terms["sparsity"] = lam * tanh_sparsity(out, cfg.sparsity_c)
            if cfg.preact_coefficient > 0:
                theta = self.stack.threshold().detach()
                terms["preact"] = cfg.preact_coefficient * preact_loss(out, theta)
        elif act == "relu":
            terms["sparsity"] = lam * l1_sparsity(out)
            if cfg.preact_coefficient > 0:
                terms["preact"] = cfg.preact_coefficient * preact_loss(
                    out, None, mask=self.dead.dead_mask())
        elif cfg.auxk_coefficient > 0:
            k_aux = cfg.auxk_k or max(1, min(2 * self.arch.k, self.arch.n_features // 2))
            terms["auxk"] = cfg.auxk_coefficient * auxk_loss(
                self.stack, out, target, self.dead.dead_mask(), k_aux)
        return terms

    def train_step(self) -> tuple[StackOutput, torch.Tensor, dict[str, torch.Tensor]]:
        """Gradients of `grad_accumulation` equal micro-batches summed (each weighted 1/G, so a
        step equals one step on the whole batch for per-token activations), then one update."""
        n_micro = self.optim.grad_accumulation
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, torch.Tensor] = {}
        for index in range(n_micro):
            x, y = self._normalise(*self._fetch(self.local_batch // n_micro))
            sync = index == n_micro - 1 or self.world_size == 1
            with (nullcontext() if sync else self.model.no_sync()), \
                    torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                out = self.model(x)
            weighted = {k: v / n_micro for k, v in self.objective(out, y).items()}
            if index == n_micro - 1 and self.optim.kl_coefficient > 0:
                weighted["kl"] = self.optim.kl_coefficient * self.end_to_end(self.stack)
            sum(weighted.values()).backward()
            for key, value in weighted.items():
                totals[key] = totals.get(key, 0) + value.detach()
            self.dead.update(out.acts.detach(), x.shape[0] * self.world_size)
            if self.arch.activation == "batchtopk":
                self._update_threshold_estimate(out.pre)
        totals["total"] = sum(totals.values())
        if self.arch.unit_decoder:
            self.stack.project_decoder_gradients()
        clip = self.optim.grad_clip if self.optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.stack.parameters(), clip)
        self._stop_if_diverged(totals["total"], grad_norm)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.step, self.optim)
        self.optimizer.step()
        if self.arch.unit_decoder:
            self.stack.normalize_decoder_rows()
        return out, y, totals

    def _stop_if_diverged(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        bad = (~torch.isfinite(loss.detach())) | (~torch.isfinite(grad_norm.detach()))
        bad = dist.all_reduce(bad.reshape(1).to(self.device), "max")
        if not bool(bad.item()):
            return
        where = "no checkpoint was written yet"
        if self.last_checkpoint_step is not None and self.out_dir is not None:
            where = (f"the last good checkpoint is {self.out_dir / ckpt.CHECKPOINT_DIR} "
                     f"(step {self.last_checkpoint_step}); it was left untouched")
        raise TrainingDivergedError(
            f"training stopped at step {self.step + 1}: the loss is {loss.item()} and the "
            f"gradient norm {grad_norm.item()} (non-finite activations in the data, or a "
            f"learning rate that is too high); {where}")

    @torch.no_grad()
    def _update_threshold_estimate(self, pre: torch.Tensor) -> None:
        estimate = dist.all_reduce(batch_threshold(pre, self.arch.k), "mean")
        buf, n = self.stack.threshold_estimate, self.stack.threshold_updates
        if int(n) == 0:
            buf.copy_(estimate)
        else:
            decay = self.optim.threshold_ema
            buf.mul_(decay).add_((1 - decay) * estimate)
        n += 1

    # -- the end of training --------------------------------------------------------------------
    def finalize(self) -> None:
        """Fit BatchTopK's per-feature thresholds and measure trained-vs-exported FVU (on
        batches the run has not trained on); warn when the export loses more than 1 %."""
        fit_thresholds(self.stack, self._normalised_batches(self.optim.threshold_fit_batches),
                       self.arch, self.optim)
        if self.best is not None and self.best.step is not None:  # rank 0 only keeps it
            best = self.best.load(self.stack)
            fit_thresholds(best, self._normalised_batches(self.optim.threshold_fit_batches),
                           self.arch, self.optim, across_ranks=False)
            self.best.store(best)
        if not dist.is_main():
            return
        checked = self.best.load(self.stack) if self.best is not None and \
            self.best.step is not None else self.stack
        batches = [self._fetch() for _ in range(FIDELITY_BATCHES)]
        self.fidelity = check_export(checked, batches)
        if self.log is not None:
            self.log.write({"step": self.step, "export": self.fidelity.to_json()})
        say = self._bar.write if self._bar is not None and self.progress else None
        message = f"export check: {self.fidelity.summary()}"
        if not self.fidelity.ok:
            print(f"warning: the exported transcoders reconstruct worse than the trained ones "
                  f"({message})", file=sys.stderr)
        elif say is not None:
            say(message)

    def _normalised_batches(self, n: int):
        for _ in range(n):
            x, _ = self._fetch()
            yield x / self.stack.input_scale[None, :, None]

    # -- metrics ------------------------------------------------------------------------------
    def log_metrics(self, out: StackOutput, target: torch.Tensor,
                    terms: dict[str, torch.Tensor]) -> dict[str, Any]:
        sums = MetricSums.from_batch(out.recon.detach(), target, out.acts.detach()).all_reduce()
        losses = {k: float(dist.all_reduce(v.detach().double().reshape(1).clone(), "mean"))
                  for k, v in terms.items()}
        fvu, l0, dead = sums.fvu(), sums.l0(), self.dead.dead_fraction()
        record = {
            "step": self.step, "tokens": self.step * self.optim.batch_size,
            "lr": learning_rate(self.step - 1, self.optim),
            "sparsity_coefficient": sparsity_coefficient(self.step - 1, self.optim),
            "loss": losses, "fvu": fvu, "nmse": sums.nmse(), "l0": l0, "dead_fraction": dead,
            "mean_fvu": sum(fvu) / len(fvu), "mean_l0": sum(l0) / len(l0),
            "mean_dead_fraction": sum(dead) / len(dead), "time": time.time(),
            "tokens_per_second": self.tokens_per_second,
        }
        if self.log is not None and dist.is_main():
            self.log.write(record)
        return record

    def evaluate(self) -> None:
        """Run the evaluator on rank 0 and log its result (other ranks wait)."""
        if dist.is_main():
            self.last_eval = self.evaluator(self.stack)
            if self.log is not None:
                self.log.write({"step": self.step, "eval": self.last_eval})
            if self.best is not None:
                self.best.offer(self.stack, self.step, self.last_eval)
            if self._bar is not None and self.progress:
                summary = ", ".join(f"{k}={v:.4g}" for k, v in self.last_eval.items()
                                    if isinstance(v, float))
                self._bar.write(f"step {self.step}: {summary}")
        dist.barrier()

    # -- checkpoints --------------------------------------------------------------------------
    def save(self) -> Path:
        """Write a checkpoint of the current step (all ranks must call this)."""
        assert self.out_dir is not None
        if dist.is_main():
            ckpt.temporary_dir(self.out_dir)
        dist.barrier()
        tmp = self.out_dir / f"{ckpt.CHECKPOINT_DIR}.tmp"
        ckpt.write_rank_source_state(tmp, self.rank, self.source.state_dict())
        dist.barrier()
        if dist.is_main():
            state = {"step": self.step, "world_size": self.world_size,
                     "architecture": to_json_dict(self._resolved_arch()),
                     "optim": to_json_dict(self.optim),
                     "metadata": self.metadata}
            ckpt.write_checkpoint_files(tmp, self.stack.state_dict(), self.optimizer,
                                        {"dead.since_fired": self.dead.since_fired}, state)
            ckpt.commit(self.out_dir)
        dist.barrier()
        self.last_checkpoint_step = self.step
        return self.out_dir / ckpt.CHECKPOINT_DIR

    def _resolved_arch(self) -> ArchitectureConfig:
        """The architecture with its defaults resolved, so a later change of a default never
        changes how a checkpoint's run continues."""
        return replace(self.arch, normalize_decoder=self.arch.unit_decoder)

    def load(self, directory: Path) -> None:
        """Restore everything a step depends on: weights, buffers, Adam, counters, data order."""
        saved = ckpt.read_checkpoint(directory)
        state = saved.state
        if not same_training(architecture_from_dict(state["architecture"]), self.arch):
            raise TrainingConfigError(
                f"{directory} holds a different transcoder ({state['architecture']}); use a new "
                "--out directory or the same settings")
        if int(state["world_size"]) != self.world_size:
            raise TrainingConfigError(
                f"{directory} was written by {state['world_size']} processes; resume it with the "
                f"same number (now {self.world_size})")
        _check_same_optim(optim_from_dict(state["optim"]), self.optim, directory)
        saved_meta = state.get("metadata") or {}
        for key in sorted(set(saved_meta) & set(self.metadata)):
            if not same_setting(key, saved_meta[key], self.metadata[key]):
                raise TrainingConfigError(
                    f"{directory} was trained with {key} {saved_meta[key]!r}, now "
                    f"{self.metadata[key]!r}; use a new --out directory or the same {key}")
        weights = {k: v.to(self.device) for k, v in saved.model.items()}
        for name, value in self.stack.state_dict().items():
            if name.startswith("feature_threshold") and name not in weights:
                weights[name] = value  # a checkpoint from before per-feature thresholds
        self.stack.load_state_dict(weights)
        self.optimizer.load_state_dict(saved.optimizer)
        self.dead.since_fired = saved.trainer_tensors["dead.since_fired"].to(self.device)
        try:
            self.source.load_state_dict(ckpt.read_rank_source_state(directory, self.rank))
        except (KeyError, RuntimeError, ValueError) as exc:
            raise TrainingDataError(
                f"{directory}: the saved data position does not fit this activation source "
                f"({type(self.source).__name__}: {exc}); resume with the same data settings "
                "(e.g. with or without --cache) or use a new --out directory") from None
        self.step = int(state["step"])
        self.last_checkpoint_step = self.step
        if self.best is not None:
            self.best.restore(self.step)
        if self.log is not None and dist.is_main():
            self.log.truncate_after(self.step)


@torch.no_grad()
def fit_thresholds(stack: TranscoderStack, normalised_inputs, arch: ArchitectureConfig,
                   optim: OptimConfig, *, across_ranks: bool = True) -> None:
    """BatchTopK only: per-feature thresholds from `threshold_fit_batches` batches of
    normalised inputs, agreed across ranks (mean) unless only one rank fits, stored in the
    stack."""
    if arch.activation != "batchtopk" or optim.threshold_fit_batches == 0:
        return
    pre_batches = (stack.pre_activations(x).float() for x in normalised_inputs)
    theta = fit_feature_thresholds(pre_batches, arch.k, stack.threshold_estimate.cpu())
    theta = theta.to(stack.feature_threshold.device)
    if across_ranks:
        theta = dist.all_reduce(theta, "mean")
    stack.feature_threshold.copy_(theta)
    stack.feature_threshold_fitted.fill_(True)


def check_export(stack: TranscoderStack, batches) -> ExportFidelity:
    """Trained-vs-exported FVU of `stack` on raw `(x, y)` batches."""
    exported = to_transcoders(stack, input_hook="in", output_hook="out").to(stack.W_enc.device)
    return export_fidelity(stack, batches, exported)


def _logged_fidelity(log: JsonlLog) -> ExportFidelity | None:
    records = [r["export"] for r in log.read() if "export" in r]
    if not records:
        return None
    data = {k: v for k, v in records[-1].items() if k != "relative_gap"}
    return ExportFidelity(**data)


def _check_same_optim(saved: OptimConfig, current: OptimConfig, directory: Path) -> None:
    """A resumed run may change bookkeeping (steps, logging) but not what it optimises."""
    volatile = {"steps", "log_every", "checkpoint_every", "mixed_precision",
                "threshold_fit_batches", "lr_warmup_steps", "dead_after_tokens"}
    for name in saved.__dataclass_fields__:
        if name not in volatile and getattr(saved, name) != getattr(current, name):
            raise TrainingConfigError(
                f"{directory} was trained with {name}={getattr(saved, name)!r}, now "
                f"{getattr(current, name)!r}; use a new --out directory or the same setting")


def _wrap_ddp(stack: TranscoderStack) -> DistributedDataParallel:
    """DDP without per-forward buffer broadcasts: ranks keep their buffers (scales, threshold
    estimate) identical by all-reducing them, so the broadcast would only cost time."""
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in params:  # newer torch renamed the switch
        return DistributedDataParallel(stack, forward_sync_buffers=False)
    return DistributedDataParallel(stack, broadcast_buffers=False)


def _default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _postfix(metrics: dict[str, Any]) -> dict[str, str]:
    return {"loss": f"{metrics['loss']['total']:.4g}", "fvu": f"{metrics['mean_fvu']:.3f}",
            "L0": f"{metrics['mean_l0']:.1f}", "dead": f"{metrics['mean_dead_fraction']:.2f}"}
