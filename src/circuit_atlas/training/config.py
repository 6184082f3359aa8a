"""Settings of a transcoder training run: what to build (`ArchitectureConfig`) and how to
optimise it (`OptimConfig`).

Both are plain dataclasses that round-trip through JSON, because they are stored in every
checkpoint (so a resumed run provably continues the same experiment) and in the exported
transcoder config. `validate()` turns user mistakes into `TrainingConfigError`s that name the
offending argument, before any tensor is allocated.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from circuit_atlas.training.errors import TrainingConfigError

KINDS = ("plt", "skip", "clt")
ACTIVATIONS = ("relu", "jumprelu", "topk", "batchtopk")


@dataclass
class ArchitectureConfig:
    """Shape and activation function of the transcoder stack.

    `kind`: "plt" (one transcoder per layer), "skip" (PLT plus an affine skip `x·W_skipᵀ`) or
    "clt" (encoder per layer, decoders from layer l into every layer ≥ l).
    `k` is the number of active features per token and layer for topk / batchtopk.
    `bandwidth` is the width ε of the rectangle kernel of the JumpReLU straight-through
    estimator and `initial_threshold` the starting θ; both are in units of the normalised
    pre-activations (encoder rows start at unit norm and inputs at unit variance per coordinate,
    so pre-activations start near N(0, 1)).
    `decoder_init_norm` is the starting norm of a decoder row relative to √d (0: decoders start
    at zero, so the first steps move only the encoders' choice of features).
    `normalize_decoder` keeps every decoder row at unit norm (the gradient's component along
    the row is removed before each step and the row rescaled after it), so a feature's
    activation alone carries its magnitude; None (default) means off: through `circuit-atlas
    train` on the comparison task it raised the FVU (0.00032 → 0.00036 and 0.00023 → 0.00038
    over two seeds), although on stored, fully shuffled activations it helped (docs/training.md).
    `unit_decoder` gives the resolved value (checkpoints record it). `center_encoder` sets the encoder bias at start so
    that the mean input has pre-activation 0: residual streams have a large mean, which would
    otherwise decide which features fire first.
    """

    kind: str
    n_layers: int
    d_model: int
    n_features: int
    activation: str = "jumprelu"
    k: int | None = None
    bandwidth: float = 0.1
    initial_threshold: float = 0.5
    decoder_init_norm: float = 0.1
    normalize_decoder: bool | None = None
    center_encoder: bool = True

    @property
    def cross_layer(self) -> bool:
        return self.kind == "clt"

    @property
    def has_skip(self) -> bool:
        return self.kind == "skip"

    @property
    def unit_decoder(self) -> bool:
        """Whether decoder rows are kept at unit norm (see `normalize_decoder`)."""
        return bool(self.normalize_decoder)

    def validate(self) -> "ArchitectureConfig":
        if self.kind not in KINDS:
            raise TrainingConfigError(
                f"--kind: unknown transcoder kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.activation not in ACTIVATIONS:
            raise TrainingConfigError(
                f"--activation: unknown activation {self.activation!r}; expected one of "
                f"{', '.join(ACTIVATIONS)}")
        _positive_int("--features", self.n_features)
        _positive_int("n_layers", self.n_layers)
        _positive_int("d_model", self.d_model)
        if self.activation in ("topk", "batchtopk"):
            if self.k is None:
                raise TrainingConfigError(f"--k is required with --activation {self.activation}")
            _positive_int("--k", self.k)
            if self.k > self.n_features:
                raise TrainingConfigError(
                    f"--k ({self.k}) must not exceed --features ({self.n_features})")
        _positive_float("bandwidth", self.bandwidth)
        _positive_float("initial_threshold", self.initial_threshold)
        if not self.decoder_init_norm >= 0:
            raise TrainingConfigError(
                f"decoder_init_norm must be ≥ 0, got {self.decoder_init_norm}")
        return self


@dataclass
class OptimConfig:
    """Optimisation and bookkeeping of a run.

    Units: `batch_size` is the *global* number of tokens per step (split across DDP ranks);
    `dead_after_tokens` counts tokens seen without a feature firing.
    `sparsity_coefficient` weighs Σ tanh(c·a·‖W_dec‖/√d) (JumpReLU) or Σ a·‖W_dec‖/√d (ReLU);
    `preact_coefficient` weighs Σ relu(θ − h)·‖W_dec‖/√d, the circuit-tracing paper's auxiliary
    loss that pulls dead features back towards their threshold; `auxk_coefficient` weighs the
    AuxK loss of TopK/BatchTopK (dead features reconstruct the residual error).
    """

    steps: int = 1000
    batch_size: int = 4096
    lr: float | None = None
    lr_warmup_steps: int | None = None
    lr_decay_fraction: float = 0.2
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    grad_accumulation: int = 1
    sparsity_coefficient: float = 1e-3
    sparsity_c: float = 4.0
    sparsity_warmup_steps: int = 0
    preact_coefficient: float = 3e-6
    auxk_coefficient: float = 1.0 / 32
    auxk_k: int | None = None
    dead_after_tokens: int | None = None
    kl_coefficient: float = 0.0
    threshold_ema: float = 0.99
    threshold_fit_batches: int = 16
    normalize: bool = True
    normalization_batches: int = 4
    mixed_precision: str = "auto"
    log_every: int = 50
    checkpoint_every: int = 500
    seed: int = 0

    def validate(self) -> "OptimConfig":
        _positive_int("--steps", self.steps)
        _positive_int("--batch-size", self.batch_size)
        if self.lr is not None:
            _positive_float("--lr", self.lr)
        if self.lr_warmup_steps is not None:
            _non_negative_int("--lr-warmup-steps", self.lr_warmup_steps)
        if not 0.0 <= self.lr_decay_fraction <= 1.0:
            raise TrainingConfigError(
                f"--lr-decay-fraction must be in [0, 1], got {self.lr_decay_fraction}")
        for name in ("sparsity_coefficient", "preact_coefficient", "auxk_coefficient",
                     "grad_clip", "kl_coefficient"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value >= 0.0:  # also rejects NaN
                raise TrainingConfigError(f"--{name.replace('_', '-')} must be ≥ 0, got {value}")
        _positive_float("--sparsity-c", self.sparsity_c)
        _non_negative_int("--sparsity-warmup-steps", self.sparsity_warmup_steps)
        if self.dead_after_tokens is not None:
            _positive_int("--dead-after-tokens", self.dead_after_tokens)
        _positive_int("--grad-accumulation", self.grad_accumulation)
        if self.batch_size % self.grad_accumulation:
            raise TrainingConfigError(
                f"--batch-size {self.batch_size} must be divisible by --grad-accumulation "
                f"{self.grad_accumulation} (each step sums that many equal micro-batches)")
        _positive_int("--log-every", self.log_every)
        _positive_int("--checkpoint-every", self.checkpoint_every)
        _positive_int("normalization_batches", self.normalization_batches)
        _non_negative_int("threshold_fit_batches", self.threshold_fit_batches)
        if self.auxk_k is not None:
            _positive_int("auxk_k", self.auxk_k)
        if not 0.0 <= self.threshold_ema < 1.0:
            raise TrainingConfigError(f"threshold_ema must be in [0, 1), got {self.threshold_ema}")
        if self.mixed_precision not in ("auto", "bf16", "none"):
            raise TrainingConfigError(
                f"--mixed-precision must be auto, bf16 or none, got {self.mixed_precision!r}")
        return self

    @property
    def total_tokens(self) -> int:
        """The run's token budget (every step sees `batch_size` tokens)."""
        return self.steps * self.batch_size

    def resolved(self, n_features: int) -> "OptimConfig":
        """A copy with every automatic setting (None) replaced by its value for this run.

        The rules (measured in `benchmarks/training_defaults.py`, see docs/training.md):
        the learning rate falls with the square root of the width, warm-up is a fixed share
        of the steps, and a feature counts as dead (and joins the AuxK loss) after a share of
        the token budget, so short runs revive features while they still have steps to learn.
        """
        return dataclasses.replace(
            self,
            lr=self.lr if self.lr is not None else auto_learning_rate(n_features),
            lr_warmup_steps=(self.lr_warmup_steps if self.lr_warmup_steps is not None
                             else auto_warmup_steps(self.steps)),
            dead_after_tokens=(self.dead_after_tokens if self.dead_after_tokens is not None
                               else auto_dead_after_tokens(self.total_tokens, self.batch_size)),
        ).validate()


# Automatic settings (see `OptimConfig.resolved`); constants chosen from measurements.
LR_AT_16K_FEATURES = 2e-4
WARMUP_FRACTION = 0.05
MAX_WARMUP_STEPS = 1000
DEAD_AFTER_FRACTION = 0.1
MAX_DEAD_AFTER_TOKENS = 10_000_000


DEFAULT_TOKENS = 4_096_000
MIN_STEPS = 5000
MIN_BATCH, MAX_BATCH = 256, 4096


def budget(tokens: int | None = None, batch_size: int | None = None,
           steps: int | None = None) -> tuple[int, int]:
    """`(steps, batch_size)` of a run from what the user gave (the CLI's `--tokens`,
    `--batch-size`, `--steps`; any may be None).

    The batch size, when not given, comes from the token budget: the largest power of two that
    still leaves `MIN_STEPS` optimiser steps, within [256, 4096]. On a fixed budget the number of
    updates is what limits how far training gets (3M tokens of the demo comparison: FVU 0.0025
    at 4096 tokens per step, 0.0005 at 1024, 0.0003 at 512); large budgets keep large batches,
    which use an accelerator well. `--steps` without a batch size keeps 4096 per step.
    """
    if steps is not None and tokens is not None:
        raise TrainingConfigError("give --steps or --tokens, not both")
    if batch_size is None:
        if steps is not None:
            batch_size = MAX_BATCH
        else:
            wanted = (tokens or DEFAULT_TOKENS) // MIN_STEPS
            batch_size = MIN_BATCH
            while batch_size * 2 <= min(wanted, MAX_BATCH):
                batch_size *= 2
    if steps is None:
        steps = max(1, (tokens or DEFAULT_TOKENS) // batch_size)
    return steps, batch_size


def auto_learning_rate(n_features: int) -> float:
    """Adam learning rate ∝ 1/√width, anchored at 16 384 features."""
    return LR_AT_16K_FEATURES * math.sqrt(16384 / n_features)


def auto_warmup_steps(steps: int) -> int:
    return min(MAX_WARMUP_STEPS, int(round(WARMUP_FRACTION * steps)))


def auto_dead_after_tokens(total_tokens: int, batch_size: int) -> int:
    return max(batch_size, min(MAX_DEAD_AFTER_TOKENS, int(DEAD_AFTER_FRACTION * total_tokens)))


def same_training(a: ArchitectureConfig, b: ArchitectureConfig) -> bool:
    """Whether two architectures train the same way: equal, except that the encoder centring
    (it only sets the starting bias) may differ and decoder normalisation is compared as
    resolved (`unit_decoder`), so checkpoints from before these settings still resume."""
    ignored = {"center_encoder": None, "normalize_decoder": None}
    return (dataclasses.replace(a, **ignored) == dataclasses.replace(b, **ignored)
            and a.unit_decoder == b.unit_decoder)


def to_json_dict(config: ArchitectureConfig | OptimConfig) -> dict[str, Any]:
    """Dataclass → JSON-ready dict (tuples become lists)."""
    return json_ready(dataclasses.asdict(config))


def architecture_from_dict(data: dict[str, Any]) -> ArchitectureConfig:
    values = _known_fields(ArchitectureConfig, data)
    # checkpoints from before these settings existed trained without them
    values.setdefault("normalize_decoder", False)
    values.setdefault("center_encoder", False)
    return ArchitectureConfig(**values).validate()


def optim_from_dict(data: dict[str, Any]) -> OptimConfig:
    values = _known_fields(OptimConfig, data)
    if "adam_betas" in values:
        values["adam_betas"] = tuple(values["adam_betas"])
    return OptimConfig(**values).validate()


def json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def _known_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise TrainingConfigError(f"{cls.__name__}: unknown setting(s) {', '.join(unknown)}")
    return dict(data)


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise TrainingConfigError(f"{name} must be a positive integer, got {value!r}")


def _non_negative_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TrainingConfigError(f"{name} must be a non-negative integer, got {value!r}")


def _positive_float(name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or not value > 0:
        raise TrainingConfigError(f"{name} must be a positive number, got {value!r}")
