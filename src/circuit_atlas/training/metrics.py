"""Training metrics: per-layer FVU / NMSE and L0, dead-feature tracking, the JSONL log.

Metrics are accumulated as *sums* (squared error, target energy, target sum, active counts) and
only divided at the end, so sums from several batches or several DDP ranks combine exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from circuit_atlas.io.atomic import atomic_write_text
from circuit_atlas.io.distributed import all_reduce


@dataclass
class MetricSums:
    """Per-layer sufficient statistics: Σ‖y−ŷ‖², Σ‖y‖², Σy `[L, d]`, Σ active features, N."""

    sq_error: torch.Tensor
    sq_target: torch.Tensor
    sum_target: torch.Tensor
    active: torch.Tensor
    tokens: torch.Tensor

    @classmethod
    @torch.no_grad()
    def from_batch(cls, recon: torch.Tensor, target: torch.Tensor,
                   acts: torch.Tensor) -> "MetricSums":
        recon, target = recon.double(), target.double()
        return cls(
            sq_error=(target - recon).pow(2).sum(-1).sum(0),
            sq_target=target.pow(2).sum(-1).sum(0),
            sum_target=target.sum(0),
            active=(acts != 0).sum((0, 2)).double(),
            tokens=torch.tensor(float(target.shape[0]), dtype=torch.float64,
                                device=target.device),
        )

    def add(self, other: "MetricSums") -> "MetricSums":
        return MetricSums(*(a + b for a, b in zip(self._fields(), other._fields())))

    def all_reduce(self) -> "MetricSums":
        for t in self._fields():
            all_reduce(t, "sum")
        return self

    def _fields(self) -> tuple[torch.Tensor, ...]:
        return (self.sq_error, self.sq_target, self.sum_target, self.active, self.tokens)

    def fvu(self) -> list[float]:
        """Fraction of variance unexplained: Σ‖y−ŷ‖² / Σ‖y−ȳ‖² per layer."""
        n = self.tokens
        variance = self.sq_target - self.sum_target.pow(2).sum(-1) / n
        return (self.sq_error / variance.clamp_min(1e-30)).tolist()

    def nmse(self) -> list[float]:
        """Normalised MSE: Σ‖y−ŷ‖² / Σ‖y‖² per layer."""
        return (self.sq_error / self.sq_target.clamp_min(1e-30)).tolist()

    def l0(self) -> list[float]:
        """Mean number of active features per token, per (source) layer."""
        return (self.active / self.tokens).tolist()


class DeadTracker:
    """Tokens since each feature last fired, `[L, F]`; dead = no firing for `dead_after` tokens."""

    def __init__(self, n_layers: int, n_features: int, dead_after: int,
                 device: torch.device | str = "cpu") -> None:
        self.dead_after = dead_after
        self.since_fired = torch.zeros(n_layers, n_features, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, acts: torch.Tensor, global_tokens: int) -> None:
        fired = all_reduce((acts != 0).any(0), "max")
        self.since_fired = torch.where(fired, torch.zeros_like(self.since_fired),
                                       self.since_fired + global_tokens)

    def dead_mask(self) -> torch.Tensor:
        return self.since_fired >= self.dead_after

    def dead_fraction(self) -> list[float]:
        return self.dead_mask().double().mean(-1).tolist()


class JsonlLog:
    """Append-only JSON-lines log, one record per metrics step."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def write(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop records of steps > `step` (written by a run that is being resumed from `step`),
        and a last line torn by a run killed mid-write; the rewrite is atomic."""
        if not self.path.exists():
            return
        kept = [line for line, record in _parsed_lines(self.path)
                if record is not None and record.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [record for _, record in _parsed_lines(self.path) if record is not None]


def _parsed_lines(path: Path) -> list[tuple[str, dict[str, Any] | None]]:
    """(line, record) for each non-blank line; record None where the line is not a JSON object
    (only a torn last line, from a run killed while appending, can be)."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        rows.append((line, record if isinstance(record, dict) else None))
    return rows
