"""The training loop: Adam on the transcoder stack, schedules, metrics, checkpoints, DDP.

One `Trainer` serves PLT, skip and CLT stacks with any activation function; the loss it builds
depends on the activation (see `objective`). Under `torch.distributed` (launched by torchrun or
`torch.multiprocessing.spawn`) the stack is wrapped in DistributedDataParallel and every rank
trains on its slice of the global batch; all non-gradient state is reduced across ranks so the
replicas stay identical.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from circuit_atlas.training import checkpoint as ckpt
from circuit_atlas.io import distributed as dist
from circuit_atlas.training.activations import batch_threshold
from circuit_atlas.training.architecture import StackOutput, TranscoderStack
from circuit_atlas.training.config import (ArchitectureConfig, OptimConfig, architecture_from_dict,
                                           optim_from_dict, to_json_dict)
from circuit_atlas.training.errors import (TrainingConfigError, TrainingDataError,
                                           TrainingDivergedError)
from circuit_atlas.training.losses import (auxk_loss, l1_sparsity, preact_loss,
                                           reconstruction_loss, tanh_sparsity)
from circuit_atlas.training.metrics import DeadTracker, JsonlLog, MetricSums
from circuit_atlas.training.schedules import learning_rate, sparsity_coefficient
from circuit_atlas.training.source import ActivationSource

LOG_FILE = "metrics.jsonl"


@dataclass
class TrainResult:
    stack: TranscoderStack
    step: int
    metrics: dict[str, Any] | None
    checkpoint: Path | None


class Trainer:
    """Train a `TranscoderStack` on batches from an `ActivationSource`.

    `out_dir` (optional) receives `checkpoint/` and `metrics.jsonl`; with `resume=True` (default)
    an existing checkpoint there is continued, bit-for-bit as if never interrupted.
    `evaluator(stack) -> dict` (e.g. loss recovered on held-out text) runs on rank 0 every
    `eval_every` steps and at the end; its result is logged as `{"step", "eval"}` records. It
    must not touch global random state, so evaluating never changes the training trajectory.
    """

    def __init__(self, arch: ArchitectureConfig, optim: OptimConfig, source: ActivationSource,
                 *, out_dir: str | Path | None = None, device: str | torch.device | None = None,
                 progress: bool = True, metadata: dict[str, Any] | None = None,
                 evaluator: Callable[[TranscoderStack], dict[str, Any]] | None = None,
                 eval_every: int | None = None) -> None:
        self.arch, self.optim = arch.validate(), optim.validate()
        self.source = source
        if (source.n_layers, source.d_model) != (arch.n_layers, arch.d_model):
            raise TrainingDataError(
                f"the activation source yields {source.n_layers} layers × d_model "
                f"{source.d_model}, but the transcoder was configured for {arch.n_layers} × "
                f"{arch.d_model}")
        self.rank, self.world_size = dist.rank(), dist.world_size()
        if optim.batch_size % self.world_size:
            raise TrainingConfigError(
                f"--batch-size {optim.batch_size} must be divisible by the number of processes "
                f"({self.world_size})")
        self.local_batch = optim.batch_size // self.world_size
        self.device = torch.device(device) if device is not None else _default_device()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress and dist.is_main()
        self.metadata = dict(metadata or {})
        self.evaluator = evaluator
        if eval_every is not None and eval_every <= 0:
            raise TrainingConfigError(f"--eval-every must be positive, got {eval_every}")
        self.eval_every = eval_every
        self.last_eval: dict[str, Any] | None = None
        self.stack = TranscoderStack(arch, seed=optim.seed).to(self.device)
        self.model: torch.nn.Module = self.stack
        if self.world_size > 1:
            self.model = _wrap_ddp(self.stack)
        self.optimizer = torch.optim.Adam(self.stack.parameters(), lr=optim.lr,
                                          betas=optim.adam_betas, eps=optim.adam_eps)
        self.dead = DeadTracker(arch.n_layers, arch.n_features, optim.dead_after_tokens,
                                self.device)
        self.step = 0
        self.last_checkpoint_step: int | None = None
        self.log = JsonlLog(self.out_dir / LOG_FILE) if self.out_dir is not None else None
        self.amp = optim.mixed_precision == "bf16" or (
            optim.mixed_precision == "auto" and self.device.type == "cuda")

    # -- public -----------------------------------------------------------------------------
    def run(self, *, stop_after: int | None = None, resume: bool = True) -> TrainResult:
        """Train until `optim.steps` (or until step `stop_after`, to split a run in parts)."""
        found = ckpt.find_checkpoint(self.out_dir) if resume and self.out_dir else None
        if found is not None:
            self.load(found)
        elif self.step == 0:
            self.initialise_from_data()
        end = self.optim.steps if stop_after is None else min(stop_after, self.optim.steps)
        metrics = None
        bar = tqdm(total=end, initial=self.step, disable=not self.progress, desc="training",
                   unit="step", dynamic_ncols=True)
        try:
            while self.step < end:
                out, target, losses = self.train_step()
                self.step += 1
                last = self.step == end
                if self.step % self.optim.log_every == 0 or last:
                    metrics = self.log_metrics(out, target, losses)
                    bar.set_postfix(_postfix(metrics))
                if self.evaluator is not None and (last or (
                        self.eval_every is not None and self.step % self.eval_every == 0)):
                    self.evaluate(bar)
                if self.out_dir is not None and (self.step % self.optim.checkpoint_every == 0
                                                 or last):
                    self.save()
                bar.update(1)
        finally:
            bar.close()
        path = ckpt.find_checkpoint(self.out_dir) if self.out_dir is not None else None
        return TrainResult(self.stack, self.step, metrics, path)

    # -- setup --------------------------------------------------------------------------------
    @torch.no_grad()
    def initialise_from_data(self) -> None:
        """Per-layer scales so inputs and targets have mean squared norm d, and b_dec at the mean
        normalised target (the best constant reconstruction), from a few batches."""
        L, d = self.arch.n_layers, self.arch.d_model
        sq_in = torch.zeros(L, dtype=torch.float64, device=self.device)
        sq_out, sum_out = torch.zeros_like(sq_in), torch.zeros(L, d, dtype=torch.float64,
                                                               device=self.device)
        count = torch.zeros((), dtype=torch.float64, device=self.device)
        for _ in range(self.optim.normalization_batches):
            x, y = self._fetch()
            sq_in += x.double().pow(2).sum(-1).sum(0)
            sq_out += y.double().pow(2).sum(-1).sum(0)
            sum_out += y.double().sum(0)
            count += x.shape[0]
        for t in (sq_in, sq_out, sum_out, count):
            dist.all_reduce(t, "sum")
        if self.optim.normalize:
            self.stack.input_scale.copy_((sq_in / count / d).sqrt().clamp_min(1e-12))
            self.stack.target_scale.copy_((sq_out / count / d).sqrt().clamp_min(1e-12))
        mean_target = sum_out / count / self.stack.target_scale.double()[:, None]
        self.stack.b_dec.copy_(mean_target.float())

    # -- one step -----------------------------------------------------------------------------
    def _fetch(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.source.next_batch(self.local_batch)
        return (x.to(self.device, torch.float32, non_blocking=True),
                y.to(self.device, torch.float32, non_blocking=True))

    def _normalise(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (x / self.stack.input_scale[None, :, None],
                y / self.stack.target_scale[None, :, None])

    def objective(self, out: StackOutput, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms for this step; their sum is minimised."""
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
        x, y = self._normalise(*self._fetch())
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            out = self.model(x)
        terms = self.objective(out, y)
        loss = sum(terms.values())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.optim.grad_clip if self.optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.stack.parameters(), clip)
        self._stop_if_diverged(loss, grad_norm)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.step, self.optim)
        self.optimizer.step()
        self.dead.update(out.acts.detach(), self.optim.batch_size)
        if self.arch.activation in ("topk", "batchtopk"):
            self._update_threshold_estimate(out.pre)
        terms["total"] = loss
        return out, y, terms

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
        }
        if self.log is not None and dist.is_main():
            self.log.write(record)
        return record

    def evaluate(self, bar: Any = None) -> None:
        """Run the evaluator on rank 0 and log its result (other ranks wait)."""
        if dist.is_main():
            self.last_eval = self.evaluator(self.stack)
            if self.log is not None:
                self.log.write({"step": self.step, "eval": self.last_eval})
            if bar is not None and self.progress:
                summary = ", ".join(f"{k}={v:.4g}" for k, v in self.last_eval.items()
                                    if isinstance(v, float))
                bar.write(f"step {self.step}: {summary}")
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
                     "architecture": to_json_dict(self.arch), "optim": to_json_dict(self.optim),
                     "metadata": self.metadata}
            ckpt.write_checkpoint_files(tmp, self.stack.state_dict(), self.optimizer,
                                        {"dead.since_fired": self.dead.since_fired}, state)
            ckpt.commit(self.out_dir)
        dist.barrier()
        self.last_checkpoint_step = self.step
        return self.out_dir / ckpt.CHECKPOINT_DIR

    def load(self, directory: Path) -> None:
        """Restore everything a step depends on: weights, buffers, Adam, counters, data order."""
        saved = ckpt.read_checkpoint(directory)
        state = saved.state
        if architecture_from_dict(state["architecture"]) != self.arch:
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
            if saved_meta[key] != self.metadata[key]:
                raise TrainingConfigError(
                    f"{directory} was trained with {key} {saved_meta[key]!r}, now "
                    f"{self.metadata[key]!r}; use a new --out directory or the same {key}")
        self.stack.load_state_dict({k: v.to(self.device) for k, v in saved.model.items()})
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
        if self.log is not None and dist.is_main():
            self.log.truncate_after(self.step)


def _check_same_optim(saved: OptimConfig, current: OptimConfig, directory: Path) -> None:
    """A resumed run may change bookkeeping (steps, logging) but not what it optimises."""
    volatile = {"steps", "log_every", "checkpoint_every", "mixed_precision"}
    for name in saved.__dataclass_fields__:
        if name not in volatile and getattr(saved, name) != getattr(current, name):
            raise TrainingConfigError(
                f"{directory} was trained with {name}={getattr(saved, name)!r}, now "
                f"{getattr(current, name)!r}; use a new --out directory or the same setting")


def _wrap_ddp(stack: TranscoderStack) -> DistributedDataParallel:
    """DDP without per-forward buffer broadcasts: ranks keep their buffers (scales, threshold
    estimate) identical by all-reducing them, so the broadcast would only cost time."""
    import inspect

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
