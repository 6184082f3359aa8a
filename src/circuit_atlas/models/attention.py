"""Attention with recordable, detachable and replayable patterns.

We register one attention function with transformers' `AttentionInterface`. Every supported
family calls it with the scaling, the mask (already including any sliding window) and the
Gemma-2 logit soft-cap, so one function covers all families. During one of our passes a
`PatternSink` (set through a context variable) decides what happens to the softmax output: kept
(live), detached, or replaced by a recorded pattern. Outside our passes it behaves like eager
attention, so a model left with this implementation still works.

Long prompts: a pattern is `heads × P²` numbers per layer (8k tokens, 32 heads: 8 GiB of float32
per layer), so a pass can instead record an `AttentionState` — the queries, the keys, and each
softmax row's maximum and sum, `O(P)` per layer — from which any block of the pattern is
recomputed exactly when needed. With the pattern frozen only the value path carries gradient,
so `FrozenAttention` computes `A·v` forwards, `Aᵀ·g` backwards and `A·t` for forward-mode
tangents block by block from the state, never holding more than one block of `A`.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

ATTN_IMPLEMENTATION = "circuit_atlas"

# Elements of one recomputed pattern block (heads × query rows × keys); bounds the transient memory
# of the blockwise paths (16 MiB of float32) while keeping the blocks large enough for BLAS.
BLOCK_ELEMENTS = 1 << 22
# Query rows per block when a live pass computes the pattern with whole rows (softmax needs them).
LIVE_ROW_ELEMENTS = 1 << 24


class PatternSink(Protocol):
    def pattern(self, layer: int, compute, shape: tuple[int, ...]) -> torch.Tensor:
        """Return the pattern `shape` `[B,H,Pq,Pk]` to use at `layer`; `compute()` gives the live one."""


_ACTIVE_SINK: contextvars.ContextVar[PatternSink | None] = contextvars.ContextVar(
    "circuit_atlas_attention_sink", default=None
)


@dataclass(frozen=True)
class AttentionCall:
    """What one call of the attention function saw: one layer of one pass.

    Why: explaining attention (per-head edges, QK attribution) needs the per-head tensors that
    transformers' module hands to the attention function, after its own projections, q/k norms
    and RoPE. Heads are query heads: `key` and `value` are already repeated for grouped-query
    attention. `output` is the tensor the pass goes on with (still in the autograd graph), so a
    gradient can be taken with respect to it.
    """

    layer: int
    query: torch.Tensor  # [B, H, Q, hd]: after q norm and RoPE, before `scaling`
    key: torch.Tensor  # [B, H, K, hd]
    value: torch.Tensor  # [B, H, K, hd]
    pattern: torch.Tensor  # [B, H, Q, K]: the softmax output used (live, detached or replayed)
    output: torch.Tensor  # [B, H, Q, hd]: pattern @ value, before the output projection
    mask: torch.Tensor | None  # boolean (True = may attend) or additive, broadcast to [B,1,Q,K]
    scaling: float
    softcap: float | None


AttentionObserver = Callable[[AttentionCall], None]

_ACTIVE_OBSERVER: contextvars.ContextVar[AttentionObserver | None] = contextvars.ContextVar(
    "circuit_atlas_attention_observer", default=None
)


@contextmanager
def observe_attention(observer: AttentionObserver) -> Iterator[None]:
    """Call `observer` with an `AttentionCall` for every attention call of our passes inside the
    block. An exception it raises propagates out of the pass (a probe can stop a pass early)."""
    token = _ACTIVE_OBSERVER.set(observer)
    try:
        yield
    finally:
        _ACTIVE_OBSERVER.reset(token)


def _live_pattern(query, key, attention_mask, scaling, softcap) -> torch.Tensor:
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, kv_heads, P, hd] -> [B, kv_heads·n_rep, P, hd] (grouped-query attention)."""
    if n_rep == 1:
        return x
    b, h, p, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, p, d).reshape(b, h * n_rep, p, d)


def circuit_atlas_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    softcap: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Eager attention whose softmax output goes through the active `PatternSink`."""
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if attention_mask is not None and attention_mask.dim() == 4:
        attention_mask = attention_mask[:, :, :, : key.shape[-2]]
    sink = _ACTIVE_SINK.get()
    attend = getattr(sink, "attend", None)
    if attend is not None:
        # The sink may run the whole attention itself (recorded states instead of patterns).
        result = attend(int(module.layer_idx), query, key, value, attention_mask, scaling, softcap)
        if result is not None:
            output, weights = result
            return output.transpose(1, 2).contiguous(), weights
    n_rep = query.shape[1] // key.shape[1]
    key = _repeat_kv(key, n_rep)
    value = _repeat_kv(value, n_rep)

    def compute() -> torch.Tensor:
        return _live_pattern(query, key, attention_mask, scaling, softcap)

    shape = (query.shape[0], query.shape[1], query.shape[2], key.shape[2])
    pattern = compute() if sink is None else sink.pattern(int(module.layer_idx), compute, shape)
    output = apply_pattern(pattern.to(value.dtype), value)
    observer = _ACTIVE_OBSERVER.get()
    if observer is not None:
        observer(AttentionCall(int(module.layer_idx), query, key, value, pattern, output,
                               attention_mask, float(scaling), softcap))
    return output.transpose(1, 2).contiguous(), pattern


def apply_pattern(pattern: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """`pattern [B,H,Q,K] @ value [B,H,K,dh]`, without copying a shared frozen pattern per batch.

    In attribution's frozen passes the pattern is a constant shared by every batch element (a
    batch-1 record broadcast, or the batch of cotangents `autograd.grad(is_grads_batched=True)`
    pushes through one copy). A 4-D matmul's backward then materialises the pattern once per
    batch element — `B·H·P²` floats, the dominant memory cost on long prompts. Folding the batch
    into the columns of one 2-D product per head keeps a single copy of the pattern.
    """
    shared = not pattern.requires_grad and (pattern.shape[0] == 1 or pattern.stride(0) == 0)
    if not (shared and torch.is_grad_enabled() and value.requires_grad):
        return torch.matmul(pattern, value)
    batch, heads, keys, width = value.shape
    folded = value.permute(1, 2, 0, 3).reshape(heads, keys, batch * width)
    # unbind, not folded[head]: each indexing's backward would allocate and add a zero tensor of
    # the whole `folded` (H of them); unbind's backward stacks the H gradients once.
    out = torch.stack([pattern[0, head] @ part for head, part in enumerate(folded.unbind(0))])
    return out.reshape(heads, -1, batch, width).permute(2, 0, 1, 3)


# --- O(P) attention states ----------------------------------------------------------------------


@dataclass
class _Block:
    """One non-empty tile of the pattern: query rows [q0, q1) × keys [k0, k1)."""

    q0: int
    q1: int
    k0: int
    k1: int
    full: bool  # every (query, key) pair of the tile is attended: no mask needed


@dataclass
class AttentionState:
    """Everything a frozen attention pattern of one layer needs, in `O(P)` memory.

    `query` `[H, P, hd]` and `key` `[KV, P, hd]` are the tensors the softmax saw (after rotary
    embeddings and any q/k norm; keys not repeated for grouped-query attention); `row_max` and
    `row_sum` `[H, P]` (float32) are each softmax row's maximum and sum of exponentials, so
    `A[h, q, k] = exp(s[h, q, k] − row_max[h, q]) / row_sum[h, q]` with the scores `s` recomputed
    as the live pass computed them (scaling, soft-cap). Query `q` attends to keys
    `key_start[q] ≤ k < key_stop[q]` (causal and sliding-window masks are such intervals);
    `mask` `[P, P]` is kept only for a mask that is not.
    """

    query: torch.Tensor
    key: torch.Tensor
    row_max: torch.Tensor
    row_sum: torch.Tensor
    key_start: torch.Tensor
    key_stop: torch.Tensor
    scaling: float
    softcap: float | None
    mask: torch.Tensor | None = None
    _blocks: list[_Block] | None = field(default=None, repr=False)

    @property
    def n_heads(self) -> int:
        return int(self.query.shape[0])

    @property
    def n_kv_heads(self) -> int:
        return int(self.key.shape[0])

    @property
    def n_positions(self) -> int:
        return int(self.query.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.query.dtype

    def nbytes(self) -> int:
        tensors = [self.query, self.key, self.row_max, self.row_sum, self.key_start, self.key_stop]
        if self.mask is not None:
            tensors.append(self.mask)
        return sum(t.numel() * t.element_size() for t in tensors)

    def prefix(self, length: int) -> "AttentionState":
        """The state of the first `length` positions (attention is causal: rows are unchanged)."""
        stop = self.key_stop[:length].clamp_max(length)
        return AttentionState(
            self.query[:, :length], self.key[:, :length], self.row_max[:, :length],
            self.row_sum[:, :length], self.key_start[:length], stop, self.scaling, self.softcap,
            None if self.mask is None else self.mask[:length, :length],
        )

    def blocks(self) -> list[_Block]:
        """The tiles holding attended pairs, query-block major (computed once per state)."""
        if self._blocks is None:
            self._blocks = _tiles(self)
        return self._blocks

    def pattern_block(self, block: _Block) -> torch.Tensor:
        """`A[:, q0:q1, k0:k1]` as `[KV, rep·(q1−q0), k1−k0]` (heads grouped by their key head),
        in the query dtype, equal to the live softmax output up to float rounding."""
        kv, rep = self.n_kv_heads, self.n_heads // self.n_kv_heads
        rows = block.q1 - block.q0
        query = self.query[:, block.q0 : block.q1].reshape(kv, rep * rows, -1)
        scores = torch.matmul(query, self.key[:, block.k0 : block.k1].transpose(1, 2)) * self.scaling
        if self.softcap is not None:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        scores = scores.float().view(self.n_heads, rows, -1)
        probs = torch.exp(scores - self.row_max[:, block.q0 : block.q1, None])
        probs = probs / self.row_sum[:, block.q0 : block.q1, None]
        if not block.full:
            probs = probs.masked_fill(~self._allowed(block), 0.0)
        return probs.to(self.dtype).view(kv, rep * rows, -1)

    def _allowed(self, block: _Block) -> torch.Tensor:
        if self.mask is not None:
            return self.mask[block.q0 : block.q1, block.k0 : block.k1]
        keys = torch.arange(block.k0, block.k1, device=self.key_start.device)
        start = self.key_start[block.q0 : block.q1, None]
        stop = self.key_stop[block.q0 : block.q1, None]
        return (keys[None] >= start) & (keys[None] < stop)

    def pattern(self) -> torch.Tensor:
        """The whole pattern `[1, H, P, P]` (for small prompts and tests only: `P²` memory)."""
        out = torch.zeros(self.n_heads, self.n_positions, self.n_positions, dtype=self.dtype,
                          device=self.query.device)
        for block in self.blocks():
            tile = self.pattern_block(block).view(self.n_heads, block.q1 - block.q0, -1)
            out[:, block.q0 : block.q1, block.k0 : block.k1] = tile
        return out[None]


def _block_size(n_heads: int) -> int:
    side = int(math.sqrt(BLOCK_ELEMENTS / max(1, n_heads)))
    return max(16, 1 << (side.bit_length() - 1))


def _tiles(state: AttentionState) -> list[_Block]:
    size = _block_size(state.n_heads)
    n = state.n_positions
    start, stop = state.key_start.tolist(), state.key_stop.tolist()
    tiles = []
    for q0 in range(0, n, size):
        q1 = min(n, q0 + size)
        lo, hi = min(start[q0:q1]), max(stop[q0:q1])
        if hi <= lo:
            continue
        for k0 in range((lo // size) * size, hi, size):
            k1 = min(n, k0 + size)
            if not any(s < k1 and e > k0 for s, e in zip(start[q0:q1], stop[q0:q1])):
                continue
            full = state.mask is None and all(s <= k0 and e >= k1 for s, e in zip(start[q0:q1], stop[q0:q1]))
            tiles.append(_Block(q0, q1, k0, k1, full))
    return tiles


def _key_intervals(mask: torch.Tensor | None, n_queries: int, n_keys: int, device) -> tuple:
    """(key_start, key_stop, fallback_mask) of a boolean mask `[Q, K]` (None: every key)."""
    if mask is None:
        start = torch.zeros(n_queries, dtype=torch.long, device=device)
        return start, torch.full_like(start, n_keys), None
    starts, stops, contiguous = [], [], True
    keys = torch.arange(n_keys, device=device)
    for q0 in range(0, n_queries, 256):  # a few rows at a time: no integer copy of the whole mask
        rows = mask[q0 : q0 + 256]
        count = rows.sum(-1)
        first = torch.where(rows, keys, n_keys).amin(-1)
        last = torch.where(rows, keys, -1).amax(-1)
        stop = last + 1
        first = torch.where(count > 0, first, torch.zeros_like(first))
        stop = torch.where(count > 0, stop, torch.zeros_like(stop))
        contiguous = contiguous and bool((count == stop - first).all())
        starts.append(first)
        stops.append(stop)
    start, stop = torch.cat(starts), torch.cat(stops)
    return start, stop, None if contiguous else mask.clone()


def state_from_live(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, scaling: float,
                    softcap: float | None) -> tuple[torch.Tensor, AttentionState]:
    """Live attention of one prompt (`[1, H, P, hd]` queries) computed a block of query rows at a
    time — never the whole `H × P²` pattern — and the `AttentionState` that replays it.

    Each block holds complete softmax rows, so the output equals the one-shot computation up to
    float rounding. Returns the output `[1, H, P, hd]` (not transposed) and the state.
    """
    n_heads, n_queries, head_dim = query.shape[1:]
    n_kv, n_keys = key.shape[1], key.shape[2]
    rep = n_heads // n_kv
    mask = None if attention_mask is None else attention_mask[0, 0]
    start, stop, fallback = _key_intervals(mask, n_queries, n_keys, query.device)
    rows_per_block = max(1, LIVE_ROW_ELEMENTS // max(1, n_heads * n_keys))
    outputs, maxima, sums = [], [], []
    q, k, v = query[0], key[0], value[0]
    for q0 in range(0, n_queries, rows_per_block):
        q1 = min(n_queries, q0 + rows_per_block)
        lo, hi = int(start[q0:q1].min()), int(stop[q0:q1].max())
        hi = max(hi, lo + 1)
        rows = q1 - q0
        scores = torch.matmul(q[:, q0:q1].reshape(n_kv, rep * rows, head_dim), k[:, lo:hi].transpose(1, 2))
        scores = scores * scaling
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        scores = scores.view(n_heads, rows, hi - lo)
        if mask is not None:
            scores = scores.masked_fill(~mask[q0:q1, lo:hi], torch.finfo(scores.dtype).min)
        as_float = scores.float()
        row_max = as_float.amax(-1)
        row_sum = torch.exp(as_float - row_max[..., None]).sum(-1)
        probs = torch.softmax(as_float, dim=-1).to(query.dtype)
        out = torch.matmul(probs.view(n_kv, rep * rows, hi - lo).to(v.dtype), v[:, lo:hi])
        outputs.append(out.view(n_heads, rows, -1))
        maxima.append(row_max)
        sums.append(row_sum)
    state = AttentionState(q.detach(), k.detach(), torch.cat(maxima, 1), torch.cat(sums, 1),
                           start, stop, float(scaling), softcap, fallback)
    return torch.cat(outputs, 1)[None], state


class FrozenAttention(torch.autograd.Function):
    """`out = A · value` with `A` frozen and recomputed block by block from an `AttentionState`.

    value `[B, KV, P, hd]` (keys' heads, not repeated) → out `[B, H, P, hd]`. Backward gives
    `Aᵀ · g` summed over each key head's group; the forward-mode rule gives `A · tangent`. Only
    one tile of `A` exists at a time, and it is shared by every batch element (and, under
    `autograd.grad(is_grads_batched=True)`, by every cotangent): memory is `O(P)` beyond the
    inputs and outputs. Written with out-of-place operations so that batched gradients (vmap)
    pass through.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(value: torch.Tensor, state: AttentionState) -> torch.Tensor:
        return _apply_frozen(state, value)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.state = inputs[1]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return apply_frozen_transposed(ctx.state, grad), None

    @staticmethod
    def jvp(ctx, tangent: torch.Tensor, _state_tangent=None) -> torch.Tensor:
        return _apply_frozen(ctx.state, tangent)


def frozen_attention(value: torch.Tensor, state: AttentionState) -> torch.Tensor:
    """`A · value` for the frozen pattern of `state` (see `FrozenAttention`); `[B, H, P, hd]`."""
    if value.shape[-2] != state.n_positions or value.shape[-3] != state.n_kv_heads:
        raise ValueError(
            f"attention state covers {state.n_positions} positions and {state.n_kv_heads} key heads; "
            f"value has shape {tuple(value.shape)}"
        )
    return FrozenAttention.apply(value, state)


def _apply_frozen(state: AttentionState, value: torch.Tensor) -> torch.Tensor:
    """`A · value` block by block; `value` `[..., KV, P, hd]` → `[..., H, P, hd]`."""
    lead, head_dim = value.shape[:-3], value.shape[-1]
    by_rows: dict[tuple[int, int], torch.Tensor] = {}
    for block in state.blocks():
        tile = state.pattern_block(block).to(value.dtype)  # [KV, rep·rows, keys]
        part = torch.matmul(tile, value.narrow(-2, block.k0, block.k1 - block.k0))  # [..., KV, rep·rows, hd]
        span = (block.q0, block.q1)
        by_rows[span] = part if span not in by_rows else by_rows[span] + part
    pieces = {span: part.reshape(*lead, state.n_heads, span[1] - span[0], head_dim)
              for span, part in by_rows.items()}
    return _concatenate(pieces, state.n_positions, value.new_zeros, (*lead, state.n_heads), head_dim)


def apply_frozen_transposed(state: AttentionState, grad: torch.Tensor) -> torch.Tensor:
    """`Aᵀ · grad` summed within each key head's group; `grad` `[..., H, P, hd]` → `[..., KV, P, hd]`."""
    kv, rep = state.n_kv_heads, state.n_heads // state.n_kv_heads
    lead, head_dim = grad.shape[:-3], grad.shape[-1]
    by_keys: dict[tuple[int, int], torch.Tensor] = {}
    for block in state.blocks():
        rows = block.q1 - block.q0
        tile = state.pattern_block(block).to(grad.dtype)  # [KV, rep·rows, keys]
        g = grad.narrow(-2, block.q0, rows).reshape(*lead, kv, rep * rows, head_dim)
        part = torch.matmul(tile.transpose(-1, -2), g)  # [..., KV, keys, hd]
        span = (block.k0, block.k1)
        by_keys[span] = part if span not in by_keys else by_keys[span] + part
    return _concatenate(by_keys, state.n_positions, grad.new_zeros, (*lead, kv), head_dim)


def per_head_transposed(state: AttentionState, coefficients: torch.Tensor) -> torch.Tensor:
    """`[H, P, N]`: `A_hᵀ · coefficients` for every query head `h` separately (not summed within
    key-head groups), `coefficients` `[P, N]` float32 shared by all heads. Attribution's low-rank
    hops (`models/frozen_hops.py`) move position coefficients back through a frozen pattern this
    way; one tile of `A` at a time, like `apply_frozen_transposed`."""
    out = coefficients.new_zeros(state.n_heads, state.n_positions, coefficients.shape[1])
    for block in state.blocks():
        rows = block.q1 - block.q0
        tile = state.pattern_block(block).view(state.n_heads, rows, -1).to(coefficients.dtype)
        out[:, block.k0 : block.k1] += torch.matmul(tile.transpose(1, 2), coefficients[block.q0 : block.q1])
    return out


def _concatenate(pieces: dict[tuple[int, int], torch.Tensor], length: int, zeros, lead, width: int):
    """Join position spans `{(start, stop): [..., stop-start, width]}` along positions, zeros in
    the gaps (out of place: these run under vmap for batched gradients)."""
    parts, position = [], 0
    for start, stop in sorted(pieces):
        if start > position:
            parts.append(zeros(*lead, start - position, width))
        parts.append(pieces[(start, stop)])
        position = stop
    if position < length:
        parts.append(zeros(*lead, length - position, width))
    return torch.cat(parts, dim=-2)


def _boolean_mask(*args, **kwargs):
    """Materialised boolean causal / sliding-window mask (never skipped as 'implicitly causal')."""
    from transformers.masking_utils import sdpa_mask

    kwargs["allow_is_causal_skip"] = False
    kwargs.pop("dtype", None)
    return sdpa_mask(*args, **kwargs)


def register() -> None:
    """Make `ATTN_IMPLEMENTATION` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, circuit_atlas_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _boolean_mask)


@contextmanager
def use_attention(hf_model: nn.Module, sink: PatternSink) -> Iterator[None]:
    """Route `hf_model`'s attention through our function with `sink`, restoring it afterwards."""
    register()
    configs = {id(m.config): m.config for m in hf_model.modules() if hasattr(m, "config")}
    configs = {k: c for k, c in configs.items() if hasattr(c, "_attn_implementation_internal")}
    saved = {k: c._attn_implementation_internal for k, c in configs.items()}
    token = _ACTIVE_SINK.set(sink)
    try:
        for c in configs.values():
            c._attn_implementation_internal = ATTN_IMPLEMENTATION
        yield
    finally:
        _ACTIVE_SINK.reset(token)
        for k, c in configs.items():
            c._attn_implementation_internal = saved[k]
