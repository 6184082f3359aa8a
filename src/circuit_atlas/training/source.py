"""Activation sources: where (input, target) pairs `[N, L, d]` come from.

A source hands out batches and can save / restore its position, which is what makes a resumed
run see exactly the batches an uninterrupted one would. Under DDP every rank asks for its *local*
batch; sources built on a shared random order (`TensorActivationSource`, the disk cache) draw the
same global batch on every rank and hand each rank its slice, so N ranks train on exactly the
batches one process would.

State dicts hold ints, floats, strings, lists and tensors only; checkpoints store the tensors in
safetensors and the rest in JSON.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from circuit_atlas.training.errors import TrainingDataError

SourceState = dict[str, Any]


@runtime_checkable
class ActivationSource(Protocol):
    """What the trainer needs from a data source."""

    n_layers: int
    d_model: int

    def next_batch(self, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return this rank's next `(inputs, targets)`, each `[n_tokens, L, d]`."""
        ...

    def state_dict(self) -> SourceState: ...

    def load_state_dict(self, state: SourceState) -> None: ...


class ShuffledIndex:
    """An endless stream of indices into N items, reshuffled every epoch by a seeded generator.

    Its state is the generator state plus the current permutation and cursor, so restoring it
    continues the same stream.
    """

    def __init__(self, n_items: int, seed: int) -> None:
        self.n_items = n_items
        self.generator = torch.Generator().manual_seed(seed)
        self.perm = torch.empty(0, dtype=torch.int64)
        self.cursor = 0
        self.epoch = 0

    def take(self, n: int) -> torch.Tensor:
        pieces = []
        while n > 0:
            if self.cursor >= self.perm.numel():
                self.perm = torch.randperm(self.n_items, generator=self.generator)
                self.cursor = 0
                self.epoch += 1
            piece = self.perm[self.cursor:self.cursor + n]
            self.cursor += piece.numel()
            n -= piece.numel()
            pieces.append(piece)
        return torch.cat(pieces)

    def state_dict(self) -> SourceState:
        return {"generator": self.generator.get_state(), "perm": self.perm.clone(),
                "cursor": self.cursor, "epoch": self.epoch}

    def load_state_dict(self, state: SourceState) -> None:
        self.generator.set_state(state["generator"])
        self.perm = state["perm"].to(torch.int64)
        self.cursor = int(state["cursor"])
        self.epoch = int(state["epoch"])


def rank_slice(global_items: torch.Tensor, n_local: int, rank: int) -> torch.Tensor:
    return global_items[rank * n_local:(rank + 1) * n_local]


class TensorActivationSource:
    """In-memory pairs `inputs, targets [N, L, d]`, sampled without replacement per epoch.

    Used for tests, synthetic data and activations that fit in memory.
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if inputs.dim() != 3 or inputs.shape != targets.shape:
            raise TrainingDataError(
                f"inputs and targets must both be [tokens, layers, d_model]; got "
                f"{tuple(inputs.shape)} and {tuple(targets.shape)}")
        self.inputs, self.targets = inputs, targets
        self.n_layers, self.d_model = int(inputs.shape[1]), int(inputs.shape[2])
        self.rank, self.world_size = rank, world_size
        self.index = ShuffledIndex(int(inputs.shape[0]), seed)

    @property
    def n_tokens(self) -> int:
        return int(self.inputs.shape[0])

    def next_batch(self, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        n_global = n_tokens * self.world_size
        if n_global > self.n_tokens:
            raise TrainingDataError(
                f"the activation data holds only {self.n_tokens} tokens, fewer than one batch "
                f"({n_global} tokens); use a larger corpus or a smaller --batch-size")
        rows = rank_slice(self.index.take(n_global), n_tokens, self.rank)
        return self.inputs[rows], self.targets[rows]

    def state_dict(self) -> SourceState:
        return self.index.state_dict()

    def load_state_dict(self, state: SourceState) -> None:
        self.index.load_state_dict(state)
