"""Several seeds in one run (`--seeds 0,1,2`): one model pass feeds every seed's training.

Comparing initialisations, or keeping the best of a few, is how a careful researcher trains;
on a budget the model's forward passes are the dominant cost and identical for every seed. So
the seeds' trainers advance in lockstep and read one shared stream of batches: each batch is
drawn once from the activation source and served to every trainer in turn. The seeds differ in
their initialisation (and so in everything after it), not in the data.

Checkpoints stay per seed. All trainers consume the same sequence of batches, so when one saves
(right after its step), it has read exactly the batches drawn so far, and the source's state is
its state; a resumed run restores that state once and replays from there.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch
from tqdm.auto import tqdm

from circuit_atlas.training.errors import TrainingConfigError
from circuit_atlas.training.source import ActivationSource, SourceState


class SharedBatches:
    """One source read by several consumers, each seeing every batch in the same order."""

    def __init__(self, source: ActivationSource) -> None:
        self.source = source
        self.n_layers, self.d_model = source.n_layers, source.d_model
        self.batches: deque[tuple[torch.Tensor, torch.Tensor]] = deque()
        self.first = 0          # index of batches[0] in the stream
        self.drawn = 0          # batches drawn from the source so far
        self.cursors: dict[int, int] = {}

    def consumer(self) -> "SharedConsumer":
        index = len(self.cursors)
        self.cursors[index] = self.first
        return SharedConsumer(self, index)

    def take(self, consumer: int, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        position = self.cursors[consumer]
        if position == self.drawn:
            self.batches.append(self.source.next_batch(n_tokens))
            self.drawn += 1
        x, y = self.batches[position - self.first]
        if x.shape[0] != n_tokens:
            raise TrainingConfigError("seeds sharing batches must ask for equal batch sizes")
        self.cursors[consumer] = position + 1
        while self.batches and min(self.cursors.values()) > self.first:
            self.batches.popleft()
            self.first += 1
        return x, y

    def state_of(self, consumer: int) -> SourceState:
        if self.cursors[consumer] != self.drawn:
            raise RuntimeError("a seed saved while behind the others; seeds must advance in "
                               "lockstep")
        return self.source.state_dict()

    def restore(self, consumer: int, state: SourceState) -> None:
        self.source.load_state_dict(state)
        self.batches.clear()
        self.first = self.drawn = 0
        for key in self.cursors:
            self.cursors[key] = 0


class SharedConsumer:
    """The `ActivationSource` one trainer sees."""

    def __init__(self, shared: SharedBatches, index: int) -> None:
        self.shared, self.index = shared, index
        self.n_layers, self.d_model = shared.n_layers, shared.d_model

    def next_batch(self, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.shared.take(self.index, n_tokens)

    def state_dict(self) -> SourceState:
        return self.shared.state_of(self.index)

    def load_state_dict(self, state: SourceState) -> None:
        self.shared.restore(self.index, state)


def run_in_lockstep(trainers: list[Any], *, resume: bool = True, progress: bool = True) -> list:
    """Start every trainer, advance them one step each in turn, return their results."""
    ends = [trainer.start(resume=resume) for trainer in trainers]
    for trainer in trainers:
        trainer.close_progress()
    steps = sorted({trainer.step for trainer in trainers})
    if len(steps) > 1:
        raise TrainingConfigError(
            f"the seeds' checkpoints are at different steps ({', '.join(map(str, steps))}); "
            "rerun with --no-resume (or the same --out after deleting the seed folders)")
    end = ends[0]
    with tqdm(total=end, initial=trainers[0].step, disable=not progress,
              desc=f"training {len(trainers)} seeds", unit="step", dynamic_ncols=True) as bar:
        while trainers[0].step < end:
            for trainer in trainers:
                trainer.advance(end)
            bar.update(1)
    return [trainer.result() for trainer in trainers]
