"""What every attribution phase reads: the prompt's clean run, its targets and the settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from circuit_atlas.attribution.targets import LogitTargets

if TYPE_CHECKING:
    from circuit_atlas.replacement import ReplacementModel, ReplacementRun

Strategy = Literal["auto", "vmap", "expand"]
Engine = Literal["compact", "dense"]
BatchStrategy = Literal["vmap", "expand"]


@dataclass(frozen=True)
class Settings:
    """The user's knobs (see `attribute`)."""

    max_n_logits: int
    desired_logit_prob: float
    max_feature_nodes: int | None
    batch_size: int
    update_interval: int
    strategy: Strategy
    engine: Engine
    memory_limit: int | None
    progress: bool


@dataclass
class Trace:
    """One prompt being traced: model, clean run, targets, active features and the plan's sizes."""

    model: "ReplacementModel"
    run: "ReplacementRun"
    logit_targets: LogitTargets
    active: torch.Tensor  # [n_active, 3] (layer, position, feature), lexicographic, on the run's device
    activation_values: torch.Tensor  # [n_active]
    settings: Settings

    @property
    def n_active(self) -> int:
        return int(self.active.shape[0])

    @property
    def n_logits(self) -> int:
        return len(self.logit_targets)

    @property
    def n_selected(self) -> int:
        limit = self.settings.max_feature_nodes
        return self.n_active if limit is None else min(limit, self.n_active)

    @property
    def n_layers(self) -> int:
        return int(self.run.errors.shape[0])

    @property
    def n_positions(self) -> int:
        return int(self.run.errors.shape[1])

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.model.lm.dtype

    @property
    def device(self) -> torch.device:
        return self.run.errors.device


@dataclass
class TraceResult:
    """What an engine hands back for the graph: adjacency `[n_sel + n_logits, n_sel + (L+1)·P]`
    (rows: selected features ascending, then logits), the selected active indices, and engine
    facts to record in the graph's settings."""

    adjacency: torch.Tensor
    selected: torch.Tensor
    strategy: BatchStrategy
    facts: dict
