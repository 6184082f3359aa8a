"""The few collective operations a distributed build needs, behind one small interface.

`current_ranks()` gives `TorchRanks` inside a `torch.distributed` process group of more than one
process (what `torchrun` starts; the CLI joins it with the training part's
`init_from_environment`) and `SoloRanks` otherwise, so the builder reads the same either way.
Only small integers and short messages cross ranks: block token counts, resume points, setup
errors. Tensors go to the GPU only under NCCL, which cannot move CPU tensors.
"""

from __future__ import annotations

from typing import Any

import torch

from circuit_atlas.io import distributed


class _Ready:
    """A gather that is already complete (one process)."""

    def __init__(self, counts: list[int], exhausted: list[bool]) -> None:
        self.result = (counts, exhausted)

    def wait(self) -> tuple[list[int], list[bool]]:
        return self.result


class SoloRanks:
    """One process: every collective is the identity."""

    rank = 0
    world_size = 1

    def gather_counts(self, count: int, exhausted: bool) -> _Ready:
        return _Ready([count], [exhausted])

    def reduce_int(self, value: int, op: str) -> int:
        return value

    def barrier(self) -> None:
        pass

    def broadcast(self, obj: Any) -> Any:
        return obj

    def gather_objects(self, obj: Any) -> list[Any]:
        return [obj]


class _Pending:
    """An all-gather of (count, exhausted) pairs in flight."""

    def __init__(self, work, outputs: list[torch.Tensor]) -> None:
        self.work, self.outputs, self.result = work, outputs, None

    def wait(self) -> tuple[list[int], list[bool]]:
        if self.result is None:
            self.work.wait()
            rows = torch.stack(self.outputs).cpu().tolist()
            self.result = ([int(r[0]) for r in rows], [bool(r[1]) for r in rows])
        return self.result


class TorchRanks:
    """The ranks of the initialised default `torch.distributed` process group."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.device = (torch.device("cuda", torch.cuda.current_device())
                       if dist.get_backend() == "nccl" else torch.device("cpu"))

    def gather_counts(self, count: int, exhausted: bool) -> _Pending:
        mine = torch.tensor([count, int(exhausted)], dtype=torch.int64, device=self.device)
        outputs = [torch.empty_like(mine) for _ in range(self.world_size)]
        return _Pending(self.dist.all_gather(outputs, mine, async_op=True), outputs)

    def reduce_int(self, value: int, op: str) -> int:
        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        return int(distributed.all_reduce(tensor, op).item())

    def barrier(self) -> None:
        distributed.barrier()

    def broadcast(self, obj: Any) -> Any:
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        self.dist.all_gather_object(out, obj)
        return out


def current_ranks() -> SoloRanks | TorchRanks:
    """`TorchRanks` inside a process group of several processes, else `SoloRanks`."""
    if distributed.is_distributed() and distributed.world_size() > 1:
        return TorchRanks()
    return SoloRanks()
