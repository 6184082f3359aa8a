"""Attention with recordable, detachable and replayable patterns.

We register one attention function with transformers' `AttentionInterface`. Every supported
family calls it with the scaling, the mask (already including any sliding window) and the
Gemma-2 logit soft-cap, so one function covers all families. During one of our passes a
`PatternSink` (set through a context variable) decides what happens to the softmax output: kept
(live), detached, or replaced by a recorded pattern. Outside our passes it behaves like eager
attention, so a model left with this implementation still works.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

ATTN_IMPLEMENTATION = "circuit_atlas"


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention whose softmax output goes through the active `PatternSink`."""
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    n_rep = query.shape[1] // key.shape[1]
    key = _repeat_kv(key, n_rep)
    value = _repeat_kv(value, n_rep)
    if attention_mask is not None and attention_mask.dim() == 4:
        attention_mask = attention_mask[:, :, :, : key.shape[-2]]

    def compute() -> torch.Tensor:
        return _live_pattern(query, key, attention_mask, scaling, softcap)

    sink = _ACTIVE_SINK.get()
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
