"""Thin helpers over `torch.distributed` so training, dashboard builds and batch tracing read the same
with one process or many.

Every helper is a no-op without an initialised process group, so single-process training needs
no launcher. Reductions are how ranks agree on everything that is not a gradient (metrics,
dead-feature counters, normalisation scales, the TopK threshold estimate): agreeing keeps the
ranks' replicas identical, which DDP alone guarantees only for parameters.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce ('sum', 'max', 'min' or 'mean'); returns the tensor for chaining."""
    if not is_distributed():
        return tensor
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN,
           "mean": dist.ReduceOp.SUM}
    if tensor.dtype == torch.bool:
        as_int = tensor.to(torch.int32)
        dist.all_reduce(as_int, op=ops[op])
        tensor.copy_(as_int.bool())
        return tensor
    dist.all_reduce(tensor, op=ops[op])
    if op == "mean":
        tensor.div_(world_size())
    return tensor


def init_from_environment() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1 in the environment).

    Backend: NCCL when CUDA is available, gloo otherwise (CPU runs and tests). Returns whether
    training is distributed. Calling it without torchrun is harmless.
    """
    import os

    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()
