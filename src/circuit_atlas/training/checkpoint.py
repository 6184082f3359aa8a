"""Checkpoints in safetensors + JSON (never pickle), written atomically.

Layout of `<out>/checkpoint/`:
  model.safetensors       parameters and buffers of the stack
  optimizer.safetensors   Adam moments and step counters, keyed `state.<param>.<name>`
  trainer.safetensors     trainer tensors (dead-feature counters) and `source.r<rank>.*` tensors
  state.json              step, configs, optimizer param groups, non-tensor source state

A new checkpoint is written to `checkpoint.tmp` and swapped in by renames, so a crash (or a NaN
stop) while saving never destroys the last good checkpoint.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from circuit_atlas.io.atomic import atomic_write_json
from circuit_atlas.training.errors import TrainingDataError

CHECKPOINT_DIR = "checkpoint"
FORMAT = "circuit-atlas-training-checkpoint"


@dataclass
class Checkpoint:
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    trainer_tensors: dict[str, torch.Tensor]
    state: dict[str, Any]


def split_state(state: dict[str, Any], prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Separate tensors (→ safetensors, keys prefixed) from JSON-able values."""
    tensors, plain = {}, {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            tensors[f"{prefix}{key}"] = value.detach().cpu().contiguous()
        else:
            plain[key] = value
    return tensors, plain


def join_state(tensors: dict[str, torch.Tensor], plain: dict[str, Any], prefix: str) -> dict:
    state = dict(plain)
    for key, value in tensors.items():
        if key.startswith(prefix):
            state[key[len(prefix):]] = value
    return state


def optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain_state: dict[str, dict[str, Any]] = {}
    for pid, entry in sd["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                plain_state.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "plain_state": plain_state}


def optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, entry in meta.get("plain_state", {}).items():
        state.setdefault(int(pid), {}).update(entry)
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else dict(g)
              for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def write_checkpoint_files(directory: Path, model: dict[str, torch.Tensor],
                           optimizer: torch.optim.Optimizer,
                           trainer_tensors: dict[str, torch.Tensor],
                           state: dict[str, Any]) -> None:
    """Write the rank-independent files into an (already created) temporary directory."""
    save_file({k: v.detach().cpu().contiguous() for k, v in model.items()},
              str(directory / "model.safetensors"))
    opt_tensors, opt_meta = optimizer_to_files(optimizer)
    save_file(opt_tensors, str(directory / "optimizer.safetensors"))
    save_file(trainer_tensors, str(directory / "trainer.safetensors"))
    state = dict(state, format=FORMAT, optimizer=opt_meta)
    atomic_write_json(directory / "state.json", state)


def write_rank_source_state(directory: Path, rank: int, source_state: dict[str, Any]) -> None:
    tensors, plain = split_state(source_state, "")
    save_file(tensors, str(directory / f"source_r{rank}.safetensors"))
    atomic_write_json(directory / f"source_r{rank}.json", plain, indent=None)


def read_rank_source_state(directory: Path, rank: int) -> dict[str, Any]:
    tensor_file = directory / f"source_r{rank}.safetensors"
    if not tensor_file.exists():
        raise TrainingDataError(
            f"{directory}: no data-source state for rank {rank}; resume with the number of "
            "processes the checkpoint was written with")
    plain = json.loads((directory / f"source_r{rank}.json").read_text(encoding="utf-8"))
    return join_state(load_file(str(tensor_file)), plain, "")


def temporary_dir(out_dir: Path) -> Path:
    tmp = out_dir / f"{CHECKPOINT_DIR}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit(out_dir: Path) -> Path:
    """Swap `checkpoint.tmp` in for `checkpoint` (keeping the old one until the swap is done)."""
    final, tmp, old = (out_dir / CHECKPOINT_DIR, out_dir / f"{CHECKPOINT_DIR}.tmp",
                       out_dir / f"{CHECKPOINT_DIR}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)
    return final


def find_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint (`checkpoint`, or `checkpoint.old` if a swap was cut)."""
    for name in (CHECKPOINT_DIR, f"{CHECKPOINT_DIR}.old"):
        candidate = out_dir / name
        if (candidate / "state.json").exists():
            return candidate
    return None


def read_checkpoint(directory: Path) -> Checkpoint:
    try:
        state = json.loads((directory / "state.json").read_text(encoding="utf-8"))
        if state.get("format") != FORMAT:
            raise TrainingDataError(f"{directory}/state.json is not a circuit-atlas checkpoint")
        optimizer = optimizer_from_files(load_file(str(directory / "optimizer.safetensors")),
                                         state["optimizer"])
        return Checkpoint(model=load_file(str(directory / "model.safetensors")),
                          optimizer=optimizer,
                          trainer_tensors=load_file(str(directory / "trainer.safetensors")),
                          state=state)
    except (OSError, ValueError, KeyError) as exc:
        raise TrainingDataError(f"cannot read checkpoint {directory}: {exc}") from exc
