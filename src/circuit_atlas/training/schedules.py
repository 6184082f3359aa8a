"""Learning-rate and sparsity-coefficient schedules as pure functions of the step.

Pure functions (no scheduler object) so that resuming only needs the step number to reproduce
the exact values an uninterrupted run would use.
"""

from __future__ import annotations

from circuit_atlas.training.config import OptimConfig


def learning_rate(step: int, cfg: OptimConfig) -> float:
    """Linear warm-up over `lr_warmup_steps`, constant, then linear decay to ~0 over the final
    `lr_decay_fraction` of the run (step is 0-based)."""
    warm = 1.0 if cfg.lr_warmup_steps == 0 else min(1.0, (step + 1) / cfg.lr_warmup_steps)
    decay_steps = int(round(cfg.steps * cfg.lr_decay_fraction))
    decay_start = cfg.steps - decay_steps
    decay = 1.0
    if decay_steps > 0 and step >= decay_start:
        decay = max(0.0, (cfg.steps - step) / decay_steps)
    return cfg.lr * warm * decay


def sparsity_coefficient(step: int, cfg: OptimConfig) -> float:
    """λ ramps linearly from ~0 to `sparsity_coefficient` over `sparsity_warmup_steps`, so
    features form before the penalty starts pruning them."""
    if cfg.sparsity_warmup_steps == 0:
        return cfg.sparsity_coefficient
    return cfg.sparsity_coefficient * min(1.0, (step + 1) / cfg.sparsity_warmup_steps)
