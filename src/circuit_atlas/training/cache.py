"""On-disk activation cache: (input, target) pairs in safetensors shards, for reuse across runs.

Running the language model is usually the dominant cost of training small transcoders, and
hyper-parameter sweeps need the same activations many times. `build_activation_cache` writes
`shard_00000.safetensors` … (tensors `inputs`, `targets`, each `[n, L, d]`) and then
`cache.json` (written last, so its presence marks a complete cache). `CachedActivationSource`
serves them in a seeded order: shards shuffled every epoch, rows shuffled within a shard, one
shard in memory at a time. Every rank draws the same global order and takes its slice of each
global batch, so a multi-process run sees the batches a single process would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from circuit_atlas.io.atomic import atomic_write_json
from circuit_atlas.training.errors import TrainingDataError
from circuit_atlas.training.source import ActivationSource, ShuffledIndex, SourceState, rank_slice

CACHE_CONFIG = "cache.json"
CACHE_FORMAT = "circuit-atlas-activation-cache"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_activation_cache(source: ActivationSource, directory: str | Path, *, n_tokens: int,
                           shard_tokens: int = 65536, dtype: torch.dtype = torch.bfloat16,
                           metadata: dict[str, Any] | None = None,
                           progress: bool = True) -> Path:
    """Draw `n_tokens` pairs from `source` and store them as shards in `directory`."""
    if n_tokens <= 0 or shard_tokens <= 0:
        raise TrainingDataError("cache sizes must be positive (--cache-tokens, shard size)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CACHE_CONFIG).unlink(missing_ok=True)
    shards, written = [], 0
    with tqdm(total=n_tokens, disable=not progress, desc="caching activations", unit="tok") as bar:
        while written < n_tokens:
            n = min(shard_tokens, n_tokens - written)
            x, y = source.next_batch(n)
            name = f"shard_{len(shards):05d}.safetensors"
            save_file({"inputs": x.to(dtype).contiguous(), "targets": y.to(dtype).contiguous()},
                      str(directory / name))
            shards.append({"file": name, "tokens": n})
            written += n
            bar.update(n)
    config = {"format": CACHE_FORMAT, "version": 1, "n_layers": source.n_layers,
              "d_model": source.d_model, "dtype": str(dtype).removeprefix("torch."),
              "total_tokens": written, "shards": shards, "metadata": metadata or {}}
    atomic_write_json(directory / CACHE_CONFIG, config)
    return directory


def read_cache_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CACHE_CONFIG
    if not path.exists():
        raise TrainingDataError(f"{directory} is not a complete activation cache (no {CACHE_CONFIG})")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TrainingDataError(f"{path}: not valid JSON ({exc.msg})") from None
    if config.get("format") != CACHE_FORMAT:
        raise TrainingDataError(f"{path}: not a circuit-atlas activation cache")
    return config


class CachedActivationSource:
    """Serves a cache written by `build_activation_cache` (see module docstring)."""

    def __init__(self, directory: str | Path, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        self.directory = Path(directory)
        self.config = read_cache_config(directory)
        self.n_layers, self.d_model = int(self.config["n_layers"]), int(self.config["d_model"])
        self.shards = self.config["shards"]
        for shard in self.shards:
            if not (self.directory / shard["file"]).exists():
                raise TrainingDataError(f"activation cache shard {self.directory / shard['file']} "
                                        "is missing")
        self.total_tokens = int(self.config["total_tokens"])
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shard_order = ShuffledIndex(len(self.shards), seed)
        self._draws = 0           # shards loaded so far; seeds each shard's row order
        self._current: tuple[torch.Tensor, torch.Tensor] | None = None
        self._current_shard = -1
        self._rows = torch.empty(0, dtype=torch.int64)
        self._cursor = 0

    def _load_shard(self, index: int, draw: int) -> None:
        path = self.directory / self.shards[index]["file"]
        try:
            with safe_open(str(path), framework="pt") as handle:
                x, y = handle.get_tensor("inputs"), handle.get_tensor("targets")
        except Exception as exc:  # safetensors raises its own error types
            raise TrainingDataError(f"cannot read activation cache shard {path}: {exc}") from None
        expected = (int(self.shards[index]["tokens"]), self.n_layers, self.d_model)
        if tuple(x.shape) != expected or tuple(y.shape) != expected:
            raise TrainingDataError(f"{path}: tensors have shapes {tuple(x.shape)} / "
                                    f"{tuple(y.shape)}, cache.json says {expected}")
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + draw)
        self._rows = torch.randperm(expected[0], generator=gen)
        self._current, self._current_shard = (x, y), index

    def _take_global(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        while n > 0:
            if self._current is None or self._cursor >= self._rows.numel():
                self._load_shard(int(self.shard_order.take(1)[0]), self._draws)
                self._draws += 1
                self._cursor = 0
            rows = self._rows[self._cursor:self._cursor + n]
            xs.append(self._current[0][rows])
            ys.append(self._current[1][rows])
            self._cursor += rows.numel()
            n -= rows.numel()
        return torch.cat(xs), torch.cat(ys)

    def next_batch(self, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        n_global = n_tokens * self.world_size
        if n_global > self.total_tokens:
            raise TrainingDataError(
                f"activation cache {self.directory} holds {self.total_tokens} tokens, fewer than "
                f"one batch ({n_global}); build a larger cache or use a smaller --batch-size")
        x, y = self._take_global(n_global)
        return (rank_slice(x, n_tokens, self.rank).float(),
                rank_slice(y, n_tokens, self.rank).float())

    def state_dict(self) -> SourceState:
        state = {f"order.{k}": v for k, v in self.shard_order.state_dict().items()}
        state.update(draws=self._draws, current_shard=self._current_shard, cursor=self._cursor)
        return state

    def load_state_dict(self, state: SourceState) -> None:
        self.shard_order.load_state_dict({k[6:]: v for k, v in state.items()
                                          if k.startswith("order.")})
        self._draws = int(state["draws"])
        self._current = None
        self._current_shard = int(state["current_shard"])
        if self._current_shard >= 0:
            self._load_shard(self._current_shard, self._draws - 1)
        self._cursor = int(state["cursor"])
