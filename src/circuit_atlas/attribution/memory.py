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

from circuit_atlas.attribution.decoders import BLOCK_BYTES, plan_sizes
from circuit_atlas.attribution.fill import FILL_COPY_FACTOR
from circuit_atlas.models.attention import BLOCK_ELEMENTS, LIVE_ROW_ELEMENTS
from circuit_atlas.replacement import DECODE_BYTES, ENCODE_BYTES
from circuit_atlas.attribution.store import FILL_STEP, RowStore, capacity_columns, n_row_groups
from circuit_atlas.attribution.sweep import CLOSED_FORM_GRADIENTS, SWEEP_GRADIENTS
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


# --- the compact engine's plan ----------------------------------------------------------------------
#
# Every term below is what `compact.py` and the clean run allocate, counted from sizes known before
# the allocation. The constants are the few that depend on torch's and transformers' internals
# (tensors a layer's backward holds at once); they were measured on the benchmark shapes
# (`benchmarks/attribution.py`, `tests/attribution/test_memory_plan.py` keeps them honest).

# Tensors of one prompt copy held by the clean run, in units of L × P × d (record inputs, outputs
# and MLP outputs; the run's stacked inputs, outputs, reconstruction and errors).
CLEAN_RUN_PER_LAYER = 7
# Bytes one batched backward may hold (gradients and row accumulators); a batch beyond it runs in
# parts. A GPU gets more: its matrix products want large batches.
SWEEP_BYTES = {"cpu": 1 << 30, "cuda": 8 << 30}
# Tensors the frozen single-copy pass keeps per layer, in units of P × d (residuals, hook values,
# what the linear backward needs).
FROZEN_PER_LAYER = 6
# Float32 copies of a frozen-attention tile alive at once (scores, exponentials, the cast tile).
TILE_COPIES = 4
# Float32 copies of a block of live softmax rows alive at once in the clean run.
LIVE_COPIES = 5
# Bytes per decoder slot of the plan: column (int64), activation; per real slot its flat index and
# feature (int64).
SLOT_BYTES = 8 + 4 + 8 + 8
# Bytes per active feature outside the row store: sparse COO indices and value, planning copies.
ACTIVE_BYTES = 3 * 8 + 4 + 3 * 8 + 8


@dataclass(frozen=True)
class AttentionShape:
    n_heads: int
    n_kv_heads: int
    head_dim: int


@dataclass
class CompactPlan:
    """Bytes of each part of a compact attribution run.

    `device` / `host` parts stay allocated from when they are made to the end; `device_phases` /
    `host_phases` are alive one at a time (the batched backward, a fill-in pass, the logit rows,
    the graph's assembly), so a peak is the lasting parts plus the largest phase. On a CPU run
    host and device are the same memory and everything is in `device` / `device_phases`.
    """

    device: dict[str, int]
    host: dict[str, int]
    device_phases: dict[str, int]
    host_phases: dict[str, int]
    decoder_cache_budget: int = 0
    fill_budget: int = 0
    sweep_budget: int | None = None
    clean_run_peak: int = 0  # device bytes alive at the clean run's own peak, before the rest exists

    @property
    def device_total(self) -> int:
        later = sum(self.device.values()) + max(self.device_phases.values(), default=0)
        return max(later, self.clean_run_peak)

    @property
    def host_total(self) -> int:
        return sum(self.host.values()) + max(self.host_phases.values(), default=0)

    @property
    def total(self) -> int:
        return self.device_total + self.host_total

    def parts(self) -> dict[str, float]:
        """Every part in GiB (phases marked), for reports."""
        named = {}
        for where, lasting, phases in (("device", self.device, self.device_phases),
                                       ("host", self.host, self.host_phases)):
            named.update({f"{where}: {k}": v for k, v in lasting.items()})
            named.update({f"{where}: {k} (phase)": v for k, v in phases.items()})
        return {name: round(size / 2**30, 3) for name, size in named.items()}

    def describe(self) -> str:
        parts = {**self.device, **self.host}
        phases = {**self.device_phases, **self.host_phases}
        text = ", ".join(f"{name} {format_bytes(size)}" for name, size in parts.items() if size)
        if phases:
            text += "; at most one of: " + ", ".join(f"{name} {format_bytes(size)}" for name, size in phases.items() if size)
        return text

    def check(self, limit: int | None, device: torch.device) -> None:
        """Refuse when the plan exceeds `limit` (default: what the device — and, for a GPU run,
        the host — has available)."""
        if device.type == "cpu":
            budget = available_memory(device) if limit is None else limit
            _refuse_if(self.total, budget, "memory", self.describe())
            return
        budget = available_memory(device) if limit is None else limit
        _refuse_if(self.device_total, budget, f"{device.type} memory", self.describe())
        if limit is None:
            _refuse_if(self.host_total, available_memory(torch.device("cpu")), "host memory", self.describe())


def _refuse_if(need: int, budget: int, where: str, description: str) -> None:
    if need <= budget:
        return
    raise MemoryBudgetError(
        f"attribution would need about {format_bytes(need)} of {where} but only {format_bytes(budget)} "
        f"is available ({description}). Try fewer feature nodes (max_feature_nodes / "
        "--max-feature-nodes), a smaller batch_size, a lower dtype (bfloat16), or a shorter prompt."
    )


def plan_compact_memory(
    *,
    n_layers: int,
    n_positions: int,
    d_model: int,
    attention: AttentionShape,
    n_active: int,
    n_decoder_slots: int,
    n_selected: int,
    n_logits: int,
    batch_size: int,
    dtype: torch.dtype,
    row_device_is_host: bool = False,
    expand_copies: int = 1,
    update_interval: int = 4,
    d_mlp: int | None = None,
    n_features: int = 0,
    sweep_budget: int | None = None,
    largest_block_slots: int | None = None,
    decoder_cache_limit: int = 0,
    fill_limit: int = 256 << 20,
    frozen_pass: bool = True,
) -> CompactPlan:
    """The compact engine's memory, part by part (see the module notes for the constants).

    `row_device_is_host`: the model is on a GPU, the row store and graph in host memory.
    `expand_copies`: forward copies of the "expand" strategy (1 for "vmap").
    `sweep_budget`: bytes one batched backward may hold (None: the whole batch at once).
    `frozen_pass`: whether rows need autograd's frozen pass (not when every hop has a closed
    form, `FrozenHops.complete`).
    """
    item = torch.tensor([], dtype=dtype).element_size()
    L, P, d = n_layers, n_positions, d_model
    n_fixed = (L + 1) * P
    n_rows = n_selected + n_logits
    columns = capacity_columns(n_selected, n_active, update_interval * batch_size, FILL_STEP)
    drops = columns < n_active
    states = L * P * ((attention.n_heads + attention.n_kv_heads) * attention.head_dim * item
                      + attention.n_heads * 8 + 16)
    gradients = SWEEP_GRADIENTS if frozen_pass else CLOSED_FORM_GRADIENTS
    per_target = gradients * P * d * item + (n_active + n_fixed) * 4
    part = batch_size if sweep_budget is None or expand_copies > 1 else max(1, min(batch_size, sweep_budget // per_target))
    block = BLOCK_BYTES if largest_block_slots is None else largest_block_slots * d * item
    gather = 3 * min(block, n_decoder_slots * d * item)  # rows, gradients and products of one block
    cache = min(decoder_cache_limit, n_decoder_slots * d * item)
    tiles = TILE_COPIES * min(BLOCK_ELEMENTS, attention.n_heads * P * P) * 4  # one frozen-attention tile
    # A layer's backward (its attention tiles) and the contraction of its gradient with the
    # gathered decoder block follow each other: the larger of the two is alive at a time.
    backward = part * per_target + max(gather, tiles)
    # Fill-in passes run between batches: they get the backward's memory, never more.
    fill = min(fill_limit, backward, FILL_COPY_FACTOR * P * d * item * 64) if drops else 0
    clean = CLEAN_RUN_PER_LAYER * L * P * d * item + states + n_active * ACTIVE_BYTES
    device = {
        "clean run": clean,
        # + the boolean mask
        "frozen pass": expand_copies * FROZEN_PER_LAYER * L * P * d * item + P * P if frozen_pass else 0,
        "decoder plan": n_decoder_slots * SLOT_BYTES,
        "decoder cache": cache,
    }
    device_phases = {
        "batched backward": backward,
        "fill-in pass": fill,
    }
    host = {
        "row store": RowStore.nbytes(n_active=n_active, n_fixed=n_fixed, capacity_rows=n_rows,
                                     capacity_columns=columns, n_groups=n_row_groups(n_rows, batch_size),
                                     d_model=d, vector_item=item),
        "exploration": n_active * 24 if n_selected < n_active else 0,
    }
    host_phases = {
        "logit rows": n_logits * n_active * 4 if drops else 0,
        "graph": n_rows * (n_selected + n_fixed) * 4,
    }
    if not row_device_is_host:  # one memory: phases still come one at a time
        device.update(host)
        device_phases.update(host_phases)
        host, host_phases = {}, {}
    early = clean + clean_run_transients(L, P, d, attention, item, d_mlp, n_features, n_active)
    return CompactPlan(device, host, device_phases, host_phases, cache, fill, sweep_budget, early)


def clean_run_transients(n_layers: int, n_positions: int, d_model: int, attention: AttentionShape, item: int,
                         d_mlp: int | None, n_features: int, n_active: int | None = None) -> int:
    """Bytes the clean run holds only while it runs: one layer's MLP activations, one block of
    softmax rows and its temporaries, the boolean mask, a block of dense feature activations
    (encode) and of gathered decoder rows (reconstruction)."""
    P = n_positions
    rows = min(LIVE_ROW_ELEMENTS, attention.n_heads * P * P)
    mlp = 3 * P * (d_mlp or 4 * d_model) * item
    encode = min(ENCODE_BYTES, P * n_features * 4)
    bound = n_layers * P * n_features if n_active is None else n_active  # entries decoded at most
    decoded = min(DECODE_BYTES, bound * d_model * 4)
    return mlp + LIVE_COPIES * rows * 4 + P * P + 3 * encode + 3 * decoded


def plan_for_trace(trace, strategy: str) -> CompactPlan:
    """`plan_compact_memory` for a traced prompt (a `context.Trace`) and a batch strategy."""
    on_gpu = trace.device.type != "cpu"
    slots, largest = plan_sizes(trace.active, trace.n_positions, trace.model.transcoders, trace.compute_dtype)
    return plan_compact_memory(
        n_layers=trace.n_layers, n_positions=trace.n_positions, d_model=trace.model.d_model,
        attention=attention_shape(trace.model.lm.text_config, trace.model.d_model), n_active=trace.n_active,
        n_decoder_slots=slots, largest_block_slots=largest,
        n_selected=trace.n_selected, n_logits=trace.n_logits, batch_size=trace.settings.batch_size,
        dtype=trace.compute_dtype, row_device_is_host=on_gpu,
        expand_copies=1 if strategy == "vmap" else trace.settings.batch_size,
        update_interval=trace.settings.update_interval,
        sweep_budget=SWEEP_BYTES.get(trace.device.type, SWEEP_BYTES["cuda"]),
        d_mlp=getattr(trace.model.lm.text_config, "intermediate_size", None),
        n_features=int(trace.model.transcoders.n_features),
        frozen_pass=not closed_form(trace),
    )


def closed_form(trace) -> bool:
    """Whether the compact engine's rows need no frozen pass (`FrozenHops.complete`)."""
    hops = trace.model.frozen_hops(trace.run)
    return hops is not None and hops.complete


def attention_shape(config, d_model: int) -> AttentionShape:
    heads = int(getattr(config, "num_attention_heads", getattr(config, "n_head", 1)))
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or d_model // heads)
    return AttentionShape(heads, kv_heads, head_dim)


def plan_clean_run(model, n_positions: int) -> CompactPlan:
    """What the compact clean run allocates before any feature is known (checked first, so a
    prompt too long even for that is refused before the model runs): its recorded tensors, the
    attention states, one layer's MLP activations and the encoder's block of activations."""
    lm = model.lm
    item = torch.tensor([], dtype=lm.dtype).element_size()
    d, L, P = lm.d_model, lm.n_layers, n_positions
    shape = attention_shape(lm.text_config, d)
    d_mlp = int(getattr(lm.text_config, "intermediate_size", None) or 4 * d)
    states = L * P * ((shape.n_heads + shape.n_kv_heads) * shape.head_dim * item + shape.n_heads * 8 + 16)
    clean = CLEAN_RUN_PER_LAYER * L * P * d * item + states
    transients = clean_run_transients(L, P, d, shape, item, d_mlp, int(model.transcoders.n_features))
    return CompactPlan({"clean run": clean}, {}, {"clean-run transients": transients}, {})
