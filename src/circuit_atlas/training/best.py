"""Keep the best state of a run by a held-out metric (`--keep-best fvu|loss_recovered`).

The final state is not always the best one: without learning-rate decay, or with a noisy
objective, held-out metrics can peak before the end. The keeper writes the stack's weights to
`<out>/best/` (safetensors + `best.json`) whenever an evaluation beats every earlier one, and the
run exports that state. The regular checkpoint still holds the last state, so resuming continues
training where it stopped.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from circuit_atlas.io.atomic import atomic_write_json
from circuit_atlas.training.errors import TrainingConfigError

BEST_DIR = "best"
METRICS = {"fvu": "lower", "loss_recovered": "higher"}


class BestKeeper:
    """Tracks the best evaluation of `metric` and stores the stack state that reached it."""

    def __init__(self, metric: str, out_dir: Path | None) -> None:
        if metric not in METRICS:
            raise TrainingConfigError(f"--keep-best must be one of {', '.join(METRICS)}, "
                                      f"got {metric!r}")
        self.metric, self.out_dir = metric, out_dir
        self.step: int | None = None
        self.value: float | None = None
        self._state: dict[str, torch.Tensor] | None = None

    @property
    def directory(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / BEST_DIR

    def offer(self, stack, step: int, evaluation: dict[str, Any]) -> bool:
        """Keep `stack`'s state if `evaluation[metric]` beats the best so far."""
        value = evaluation.get(self.metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        better = self.value is None or (value < self.value if METRICS[self.metric] == "lower"
                                        else value > self.value)
        if better:
            self.step, self.value = step, float(value)
            self.store(stack)
        return better

    def store(self, stack) -> None:
        """Write (or hold, without an output folder) `stack`'s state as the best one."""
        self._state = {k: v.detach().cpu().clone().contiguous()
                       for k, v in stack.state_dict().items()}
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / "model.safetensors.tmp"
        save_file(self._state, str(tmp))
        tmp.replace(self.directory / "model.safetensors")
        atomic_write_json(self.directory / "best.json",
                          {"metric": self.metric, "value": self.value, "step": self.step})

    def load(self, like):
        """A copy of the stack `like` holding the best state."""
        state = self._state
        if state is None and self.directory is not None:
            state = load_file(str(self.directory / "model.safetensors"))
        best = copy.deepcopy(like)
        best.load_state_dict({k: v.to(like.W_enc.device) for k, v in state.items()})
        return best

    def restore(self, step: int) -> None:
        """After a resume at `step`: pick up the best kept at or before it (later ones belong to
        a run that is being redone)."""
        if self.directory is None or not (self.directory / "best.json").exists():
            return
        saved = json.loads((self.directory / "best.json").read_text(encoding="utf-8"))
        if saved.get("metric") == self.metric and int(saved["step"]) <= step:
            self.step, self.value = int(saved["step"]), float(saved["value"])
