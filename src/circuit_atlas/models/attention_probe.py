"""Queries and keys of arbitrary residual-stream vectors, with the model's own modules.

Explaining why a head attends somewhere splits the residual stream at the query and key positions
into terms and asks what each term adds to the query and to the key. With the norm denominators
frozen at a recorded pass, the query at a position is an affine function of the residual there:
`q(x) = M x + c`. Rather than re-implement every family's projection, q/k norm and rotary
embedding, this module runs the real attention module of one layer on a batch of residual vectors
placed at the two positions and reads what the attention function receives:

- the residual entering the layer is replaced by zeros carrying the vectors as forward-mode
  tangents (`torch.autograd.forward_ad`), so the tangent of the query is exactly `M x` and the
  primal is the constant `c` (biases, LayerNorm offsets, through the frozen norms);
- the pass runs over just two tokens with `position_ids` naming the key and the query position,
  so rotary embeddings are those of the real positions while the batch stays small;
- the pass stops inside the layer's attention call; nothing after it runs.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as forward_ad

from circuit_atlas.errors import ShapeMismatchError
from circuit_atlas.models import adapters as A
from circuit_atlas.models.attention import AttentionCall, observe_attention, use_attention
from circuit_atlas.models.forward import _Pass
from circuit_atlas.models.freeze import LIVE, REPLAY, ForwardRecord, FreezeSpec, norm_position_axis

PROBE_CHUNK = 2048  # residual vectors per probe pass at most
PROBE_BUDGET = 256 << 20  # bytes of activations one probe pass may hold, roughly
SHORT_PROMPT = 2  # prompts up to this length are probed whole (no slicing of the record)


@dataclass
class QueryKeyProjection:
    """What residual vectors at one layer's input add to its queries and keys (per query head).

    `query[i]` is the linear contribution of query-side vector i to the query at the query
    position (after the frozen norms, q norm and RoPE, before `scaling`); `query_constant` is the
    query of a zero residual (biases). Likewise for keys at the key position; key heads are
    repeated to the query heads they serve (grouped-query attention).
    """

    query: torch.Tensor  # [n_q, H, hd] float32
    key: torch.Tensor  # [n_k, H, hd] float32
    query_constant: torch.Tensor  # [H, hd] float32
    key_constant: torch.Tensor  # [H, hd] float32
    scaling: float
    softcap: float | None


class _Stop(Exception):
    """Raised inside the probed layer's attention call to end the pass there."""


def project_queries_keys(
    lm,
    record: ForwardRecord,
    layer: int,
    *,
    query_position: int,
    key_position: int,
    query_vectors: torch.Tensor,
    key_vectors: torch.Tensor,
) -> QueryKeyProjection:
    """Queries of `query_vectors [n_q, d]` placed at `query_position` and keys of `key_vectors
    [n_k, d]` at `key_position`, as residual stream entering `layer`, with every norm's
    denominator replayed from `record` (a batch-1 record of the same prompt)."""
    n_positions = int(record.tokens.shape[-1])
    for name, position in (("query_position", query_position), ("key_position", key_position)):
        if not 0 <= position < n_positions:
            raise ShapeMismatchError(f"{name} {position} is outside 0..{n_positions - 1}")
    local, slots = _probe_record(record, [key_position, query_position])
    position_ids = None if local is record else torch.tensor([[key_position, query_position]])
    d = lm.d_model
    query_vectors, key_vectors = query_vectors.reshape(-1, d), key_vectors.reshape(-1, d)
    vectors = torch.cat([query_vectors, key_vectors]).to(lm.device, lm.dtype)
    n_q = int(query_vectors.shape[0])
    is_query = torch.arange(vectors.shape[0]) < n_q
    chunk = _chunk_size(int(local.tokens.shape[-1]), d)
    queries, keys = [], []
    constant = None
    for start in range(0, max(vectors.shape[0], 1), chunk):
        part, part_is_query = vectors[start : start + chunk], is_query[start : start + chunk]
        call, q_tan, k_tan = _probe(lm, local, layer, slots, part, part_is_query, position_ids)
        constant = constant or call
        n = part.shape[0]  # a pass with no vectors still runs one (zero) batch row
        queries.append(q_tan[:n][part_is_query.to(q_tan.device), :, slots[1]].float())
        keys.append(k_tan[:n][~part_is_query.to(k_tan.device), :, slots[0]].float())
    assert constant is not None
    return QueryKeyProjection(
        query=torch.cat(queries), key=torch.cat(keys),
        query_constant=constant.query[0, :, slots[1]].float(),
        key_constant=constant.key[0, :, slots[0]].float(),
        scaling=constant.scaling, softcap=constant.softcap,
    )


def _chunk_size(length: int, d_model: int) -> int:
    """Vectors per probe pass: about PROBE_BUDGET bytes of residual-sized activations."""
    return max(1, min(PROBE_CHUNK, PROBE_BUDGET // (length * d_model * 4 * 16)))


def _probe_record(record: ForwardRecord, positions: list[int]) -> tuple[ForwardRecord, list[int]]:
    """(the record a probe replays, where the key and query positions sit in the probe's tokens).

    A probe over just the two positions replays the norm denominators there: the cost of the
    probed layer then does not grow with the prompt. Per-head q/k norm scales are laid out
    `[B, P, H, 1]` by some families and `[B, H, P, 1]` by others; the record says which axis holds
    the positions (`norm_position_axis`). When it cannot tell (a record built by hand with as
    many heads as positions), the probe runs over the whole prompt instead, replaying the record
    as it is.
    """
    n_positions = int(record.tokens.shape[-1])
    if n_positions <= SHORT_PROMPT:
        return record, positions
    try:
        axes = {path: norm_position_axis(record, path) for path in record.norm_scales}
    except ShapeMismatchError:
        return record, positions
    index = torch.tensor(positions, device=record.tokens.device)
    local = ForwardRecord(
        tokens=record.tokens[:, index], embeddings=record.embeddings[:, index], inputs=[], outputs=[],
        final_hidden=record.final_hidden[:, index], logits=None,
        norm_scales={path: scale.index_select(axes[path], index.to(scale.device))
                     for path, scale in record.norm_scales.items()},
        norm_position_axes=axes,
    )
    return local, [0, 1]


def _probe(lm, local: ForwardRecord, layer: int, slots: list[int], vectors: torch.Tensor,
           is_query: torch.Tensor, position_ids: torch.Tensor | None,
           ) -> tuple[AttentionCall, torch.Tensor, torch.Tensor]:
    """One probe pass over the tokens of `local`: (the primal call, query tangents [B,H,T,hd],
    key tangents [B,H,T,hd]). Query vectors sit at `slots[1]`, key vectors at `slots[0]`;
    `position_ids` (for a sliced record) are the real positions of the probe's tokens."""
    batch = max(vectors.shape[0], 1)
    length = int(local.tokens.shape[-1])
    tangent = torch.zeros(batch, length, lm.d_model, device=lm.device, dtype=lm.dtype)
    if vectors.shape[0]:
        where = torch.where(is_query, slots[1], slots[0]).to(lm.device)
        tangent[torch.arange(vectors.shape[0], device=lm.device), where] = vectors
    seen: list[tuple[AttentionCall, torch.Tensor, torch.Tensor]] = []

    def observe(call: AttentionCall) -> None:
        if call.layer != layer:
            return
        q_primal, q_tangent = forward_ad.unpack_dual(call.query)
        k_primal, k_tangent = forward_ad.unpack_dual(call.key)
        primal = AttentionCall(layer, q_primal.detach(), k_primal.detach(), call.value, call.pattern,
                               call.output, call.mask, call.scaling, call.softcap)
        seen.append((primal,
                     torch.zeros_like(q_primal) if q_tangent is None else q_tangent.detach(),
                     torch.zeros_like(k_primal) if k_tangent is None else k_tangent.detach()))
        raise _Stop

    hf, adapter = lm.hf_model, lm.adapter
    probe = _Pass(hf, adapter, lm._norms, input_hook=A.HOOK_RESID_MID, output_hook=A.HOOK_MLP_OUT,
                  freeze=FreezeSpec(attention=LIVE, norms=REPLAY, replay_from=local))
    probe.batch = 1
    with torch.no_grad(), forward_ad.dual_level(), ExitStack() as stack:
        hidden = forward_ad.make_dual(torch.zeros_like(tangent), tangent)

        def replace(module, args, kwargs):
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        probe.install(stack)
        handle = adapter.layer_modules(hf)[layer].register_forward_pre_hook(replace, with_kwargs=True)
        stack.callback(handle.remove)
        stack.enter_context(use_attention(hf, probe))
        stack.enter_context(observe_attention(observe))
        base = adapter.get(hf, adapter.base)
        kwargs = {} if position_ids is None else {"position_ids": position_ids.to(lm.device)}
        try:
            base(input_ids=local.tokens.to(lm.device), use_cache=False, **kwargs)
        except _Stop:
            pass
    if not seen:
        raise ShapeMismatchError(f"layer {layer} made no attention call in the probe pass")
    return seen[0]


__all__ = ["QueryKeyProjection", "project_queries_keys"]
