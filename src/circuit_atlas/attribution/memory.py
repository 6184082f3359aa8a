"""Memory estimate made before attribution starts, so a run that cannot fit fails at once.

The estimate sums the large allocations of a run: the row buffer (rows × all source columns),
the activation-scaled decoder vectors, the stored activations of the frozen forward pass
(including the attention patterns, quadratic in prompt length), and the gradients of one batched
backward pass. It errs on the high side; the point is a clear refusal with advice instead of an
out-of-memory crash an hour in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from circuit_atlas.errors import MemoryBudgetError

# Saved tensors per layer and position in the frozen forward, in units of d_model (residual,
# norms, q/k/v, attention output, MLP input/hidden/output...). Measured on our tiny models.
ACTIVATIONS_PER_LAYER = 24


@dataclass
class MemoryEstimate:
    row_buffer: int
    decoder_vectors: int
    forward: int
    backward: int

    @property
    def total(self) -> int:
        return self.row_buffer + self.decoder_vectors + self.forward + self.backward

    def describe(self) -> str:
        parts = {
            "row buffer": self.row_buffer,
            "decoder vectors": self.decoder_vectors,
            "forward activations": self.forward,
            "batched gradients": self.backward,
        }
        return ", ".join(f"{name} {format_bytes(size)}" for name, size in parts.items())


def format_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def estimate_memory(
    *,
    n_layers: int,
    n_positions: int,
    d_model: int,
    n_heads: int,
    n_active: int,
    n_decoder_vectors: int,
    n_rows: int,
    batch_size: int,
    forward_copies: int,
    dtype: torch.dtype,
) -> MemoryEstimate:
    item = torch.tensor([], dtype=dtype).element_size()
    n_columns = n_active + (n_layers + 1) * n_positions
    per_copy = n_layers * n_positions * (ACTIVATIONS_PER_LAYER * d_model + n_heads * n_positions) * item
    return MemoryEstimate(
        row_buffer=n_rows * n_columns * 4,
        decoder_vectors=n_decoder_vectors * d_model * item,
        forward=forward_copies * per_copy,
        backward=batch_size * (n_layers + 2) * n_positions * d_model * item * 3,
    )


def available_memory(device: torch.device) -> int:
    """Bytes the run may use on `device` (free GPU memory, or available system memory)."""
    if device.type == "cuda":
        # Blocks PyTorch's caching allocator holds but no tensor uses (e.g. right after the
        # transcoders were cast to bfloat16) count as used for the driver: hand them back first,
        # so what is reported free is what large allocations can really get.
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def check_memory(estimate: MemoryEstimate, limit: int | None, device: torch.device) -> None:
    """Refuse to start when the estimate exceeds `limit` (default: what the device has free)."""
    budget = available_memory(device) if limit is None else limit
    if estimate.total <= budget:
        return
    raise MemoryBudgetError(
        f"attribution would need about {format_bytes(estimate.total)} but only {format_bytes(budget)} "
        f"is available ({estimate.describe()}). Try fewer feature nodes (max_feature_nodes / "
        "--max-feature-nodes), a smaller batch_size, a lower dtype (bfloat16), or a shorter prompt."
    )
