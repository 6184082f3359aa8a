"""Backward hops through frozen layers in low-rank form: the first hops of a feature row, cheaply.

A feature row starts as a cotangent at one position `p` of its layer's input hook. Autograd takes
it back through each frozen attention layer as a dense `[positions, d]` gradient: the output
projection's transpose at every position of the prefix, the blockwise `Aᵀ·g`, the value
projection's transpose at every position. With the pattern and the norm denominators frozen,
the gradient near the target has a much smaller form:

    G[j] = Σ_k C[j, k] · U[k]         (a `LowRankGradient`: coefficients C [P, r], basis U [r, d])

- **Entering the target's layer** (`FrozenHops.entry`): `r = 1 + H`. With `e` the cotangent moved
  back to the residual stream after attention (through the pre-MLP norm at `p` when the hook is
  after it) and `w_h` head `h`'s part of `Wₒᵀ·Nₚᵀ·e` (`Nₚ` the norm between attention and the
  residual add, if the family has one),

      G[j] = δ(j, p)·e + s_j · Σ_h A_h[p, j] · ũ_h,     ũ_h = Γᵀ·W_v,hᵀ·w_h

  (`Γ` the pre-attention norm at unit scale, `W_v,h` the rows of `h`'s key/value head, `s_j` the
  frozen inverse scale of that norm at `j`, `A_h[p, :]` one row of the frozen pattern).
- **Logit rows** (`FrozenHops.final`) start with rank 1 below the final norm.
- **Each further layer** (`FrozenHops.through`) maps a rank-`r` gradient to rank `r·(1 + H)`: the
  output projection and norms act on the `r` basis vectors, the frozen pattern on the `r`
  coefficient columns (`Aᵀ·C`, per head), and the value projection on the `H·r` new vectors. It is
  exact, and cheaper than the dense hop while `r` is small; the caller compares `flops` and stops
  (materialises the gradient and lets autograd go on) once it is not.

For a 4-layer model of d 2048 and 16 heads at 1024 tokens the entry costs `H·P·d` per target
instead of `P·d²`, and the next hop about a seventh of the dense one. The dense hops after those
(`through_dense`) compute what autograd would, from the same frozen constants, so a row needs
no frozen forward pass at all where every layer has a closed form (`FrozenHops.complete`).

The pieces are the layer's own weights (output and value projections, read as the linear maps
they are) and the frozen norms' transposes (gain, frozen inverse scale, LayerNorm's centring).
Families without a separate value projection (GPT-2's fused `c_attn`), models placed with a
`device_map`, and layers whose MLP has a skip path (below the target's layer) keep autograd.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from circuit_atlas.errors import UnsupportedArchitectureError
from circuit_atlas.models import adapters as A
from circuit_atlas.models.attention import AttentionState, apply_frozen_transposed, per_head_transposed
from circuit_atlas.models.freeze import ForwardRecord, norm_position_axis
from circuit_atlas.models.norms import gain_of
from circuit_atlas.models.placement import is_dispatched


@dataclass
class LowRankGradient:
    """A batch of gradients over positions: `G[b, j] = Σ_k coefficients[b, j, k] · basis[b, k]`."""

    coefficients: torch.Tensor  # [B, P', r] float32
    basis: torch.Tensor  # [B, r, d] float32

    @property
    def rank(self) -> int:
        return int(self.basis.shape[1])

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        """`[B, P', d]`."""
        return torch.bmm(self.coefficients, self.basis).to(dtype)


class FrozenHops:
    """Low-rank hops through the frozen layers of one clean single-prompt `record`.

    `has_skip(layer)` says whether the transcoders add a skip path around that layer's MLP (a
    gradient below the target's layer would also flow through it; those layers keep autograd).
    """

    def __init__(self, lm, record: ForwardRecord, input_hook: str, output_hook: str,
                 has_skip: Callable[[int], bool]):
        self.lm, self.record, self.has_skip = lm, record, has_skip
        self.input_hook, self.output_hook = input_hook, output_hook
        self._layers: dict[int, _Layer | None] = {}
        self._states: dict[tuple[int, int], AttentionState] = {}
        self._complete: bool | None = None

    @classmethod
    def of(cls, lm, record: ForwardRecord, input_hook: str, output_hook: str,
           has_skip: Callable[[int], bool]) -> "FrozenHops | None":
        """None where this model has no closed form: no separate value projection, placed with a
        device_map, or a record of several prompts."""
        if lm.adapter.layer_value_projection is None or is_dispatched(lm.hf_model) or record.tokens.shape[0] != 1:
            return None
        return cls(lm, record, input_hook, output_hook, has_skip)

    @property
    def complete(self) -> bool:
        """Whether every hop of every row has a closed form here (every layer's layout, no skip
        paths, the final norm), so that a row needs no autograd pass at all (`through_dense`)."""
        if self._complete is None:
            layers = range(self.lm.n_layers)
            self._complete = (all(self.layer(l) is not None and not self.has_skip(l) for l in layers)
                              and self._final_norm() is not None)
        return self._complete

    def layer(self, layer: int) -> "_Layer | None":
        if layer not in self._layers:
            self._layers[layer] = _Layer.of(self.lm, self.record, layer)
        return self._layers[layer]

    # --- hops --------------------------------------------------------------------------------------
    def entry(self, layer: int, positions: torch.Tensor, vectors: torch.Tensor, length: int) -> LowRankGradient | None:
        """The gradient at the residual stream entering `layer` from cotangents `vectors [B, d]` at
        its input hook, element `b` at position `positions[b] < length`; None without a closed form."""
        hop = self.layer(layer)
        if hop is None:
            return None
        positions = positions.to(hop.pre_attention.scale.device)
        at_mid = hop.to_residual(self.input_hook, positions, vectors).float()  # [B, d]
        heads = hop.head_cotangents(at_mid, hop.post_scale(positions))  # [B, 1, H, hd]
        rows = self._pattern_rows(layer, positions, length)  # [B, H, length]
        basis = hop.value_vectors(heads)[:, 0]  # [B, H, d]
        spread = rows.transpose(1, 2) * hop.pre_attention.scale[:length, None].float()
        return LowRankGradient(torch.cat([_points(positions, length), spread], dim=2),
                               torch.cat([at_mid[:, None], basis], dim=1))

    def final(self, positions: torch.Tensor, vectors: torch.Tensor, length: int) -> LowRankGradient | None:
        """The gradient at the residual stream entering the final norm from cotangents
        `vectors [B, d]` at its output (logit rows), element `b` at `positions[b]`: rank 1."""
        norm = self._final_norm()
        if norm is None:
            return None
        positions = positions.to(norm.scale.device)
        grad = norm.vjp(vectors, norm.scale[positions, None], self.lm.dtype)
        return LowRankGradient(_points(positions, length), grad.float()[:, None])

    def through(self, layer: int, gradient: LowRankGradient) -> LowRankGradient | None:
        """The gradient at the residual stream entering `layer` from `gradient` at the one leaving
        it (rank `r` → `r·(1 + H)`); None where `layer` has no closed form."""
        hop = self.layer(layer)
        if hop is None or self.has_skip(layer):
            return None
        batch, length, rank = gradient.coefficients.shape
        heads = hop.head_cotangents(gradient.basis.reshape(batch * rank, -1), None)  # [B·r, 1, H, hd]
        coefficients = gradient.coefficients
        if hop.post_attention is not None:
            coefficients = coefficients * hop.post_attention.scale[:length, None].float()
        moved = self._transposed(layer, length, coefficients)  # [B, length, H, r]
        vectors = hop.value_vectors(heads.view(batch, rank, *heads.shape[2:]))  # [B, r, H, d]
        n_heads = vectors.shape[2]
        moved = moved * hop.pre_attention.scale[:length, None, None].float()
        new_coefficients = moved.reshape(batch, length, n_heads * rank)
        new_basis = vectors.transpose(1, 2).reshape(batch, n_heads * rank, -1)
        return LowRankGradient(torch.cat([gradient.coefficients, new_coefficients], dim=2),
                               torch.cat([gradient.basis, new_basis], dim=1))

    def through_dense(self, layer: int, gradient: torch.Tensor) -> torch.Tensor:
        """`[B, P', d]`: the same hop for a dense gradient `[B, P', d]` at the residual stream
        leaving `layer` — what autograd through a frozen pass computes, without the pass: the
        output projection's transpose, `Aᵀ·g` tile by tile (summed within key-head groups), the
        value projection's transpose and the pre-attention norm, at every position."""
        hop = self.layer(layer)
        batch, length, d = gradient.shape
        flat = gradient.reshape(batch * length, d)
        post = None if hop.post_attention is None else hop.post_attention.scale[:length].repeat(batch)
        heads = hop.head_cotangents(flat, post, dtype=gradient.dtype)  # [B·P', 1, H, hd]
        heads = heads.view(batch, length, hop.n_heads, -1).transpose(1, 2)  # [B, H, P', hd]
        if layer in self.record.attention_states:
            values = apply_frozen_transposed(self._state(layer, length), heads)  # [B, KV, P', hd]
        else:
            pattern = self.record.attention_patterns[layer][0, :, :length, :length].to(heads.dtype)
            moved = torch.matmul(pattern.transpose(1, 2), heads)  # [B, H, P', hd]
            values = moved.view(batch, hop.n_kv_heads, -1, length, moved.shape[-1]).sum(2)
        values = values.transpose(1, 2).reshape(batch * length, -1)  # [B·P', KV·hd]
        back = hop.value_input(values, hop.pre_attention.scale[:length].repeat(batch))
        return gradient + back.view(batch, length, d).to(gradient.dtype)

    def output_gradient(self, layer: int, gradient: torch.Tensor) -> torch.Tensor:
        """The gradient at `layer`'s output hook from `gradient [B, P', d]` at the residual stream
        it is added to: the same tensor, or through the post-MLP norm (Gemma) when the hook is
        before it."""
        post = self.lm.adapter.layer_post_mlp_norm
        if post is None or self.output_hook != A.HOOK_MLP_OUT_RAW:
            return gradient
        norm = self.layer(layer).norm(post)
        batch, length, d = gradient.shape
        scale = norm.scale[:length].repeat(batch)[:, None]
        return norm.vjp(gradient.reshape(batch * length, d), scale, gradient.dtype).view(batch, length, d)

    def _final_norm(self) -> "_Norm | None":
        path = self.lm.adapter.final_norm
        if path not in self.lm.norms or path not in self.record.norm_scales:
            return None
        return _norm_of(self.lm, self.record, path)

    # --- costs (multiply-adds, for choosing between this and autograd's dense hop) -----------------
    def through_cost(self, layer: int, batch: int, rank: int, length: int) -> tuple[float, float, int] | None:
        """(low-rank multiply-adds, dense multiply-adds, low-rank bytes) of the hop through `layer`
        for a rank-`rank` gradient, counting the materialisation of the result; None where there
        is no low-rank hop."""
        hop = self.layer(layer)
        if hop is None or self.has_skip(layer):
            return None
        d, width, kv_width, heads, head_dim = hop.shape
        pairs = length * (length + 1) / 2  # causal (key, query) pairs
        new_rank = rank * (1 + heads)
        low = (batch * rank * (d * width + heads * head_dim * d) + heads * pairs * (head_dim + batch * rank)
               + batch * length * new_rank * d)
        dense = batch * length * d * (width + kv_width) + heads * pairs * head_dim * (1 + batch)
        memory = 4 * (heads * length * batch * rank + batch * new_rank * (d + length) + batch * length * d)
        return float(low), float(dense), int(memory)

    # --- the frozen pattern -------------------------------------------------------------------------
    def _state(self, layer: int, length: int) -> AttentionState:
        key = (layer, length)
        if key not in self._states:
            state = self.record.attention_states[layer]
            self._states[key] = state if length == state.n_positions else state.prefix(length)
        return self._states[key]

    def _pattern_rows(self, layer: int, positions: torch.Tensor, length: int) -> torch.Tensor:
        """`[B, H, length]` float32: the frozen pattern's rows at `positions`, keys < length."""
        if layer not in self.record.attention_states:
            pattern = self.record.attention_patterns[layer][0]  # [H, P, P]
            return pattern[:, positions, :length].transpose(0, 1).float()
        return pattern_rows(self.record.attention_states[layer], positions, length).transpose(0, 1)

    def _transposed(self, layer: int, length: int, coefficients: torch.Tensor) -> torch.Tensor:
        """`[B, length, H, r]`: `Σ_i A_h[i, j] · coefficients[b, i, k]` for every head."""
        batch, _, rank = coefficients.shape
        flat = coefficients.permute(1, 0, 2).reshape(length, batch * rank)
        if layer in self.record.attention_states:
            moved = per_head_transposed(self._state(layer, length), flat)  # [H, length, B·r]
        else:
            pattern = self.record.attention_patterns[layer][0, :, :length, :length].float()
            moved = torch.matmul(pattern.transpose(1, 2), flat)
        return moved.view(-1, length, batch, rank).permute(2, 1, 0, 3)


@dataclass
class _Norm:
    module: nn.Module
    kind: str
    scale: torch.Tensor  # [P] the frozen inverse scale at every position of the clean record

    def vjp(self, cotangent: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype,
            normalized: bool = False) -> torch.Tensor:
        """`[N, d]` in `dtype`: cotangents `[N, d]` at the norm's output (or its pre-gain
        `normalized` value) taken back to its input, with inverse scales `scale [N, 1]`. With the
        scale frozen the norm is affine in its input; its transposed linear part is the gain, the
        scale and (LayerNorm) the centring, which is symmetric."""
        if normalized:
            grad = cotangent.float() * scale
        else:
            grad = cotangent.float() * gain_of(self.kind, self.module).to(cotangent.device)
            grad.mul_(scale)
        if self.kind == "layernorm":
            grad.sub_(grad.mean(-1, keepdim=True))
        return grad.to(dtype)


def _norm_of(lm, record: ForwardRecord, path: str) -> _Norm:
    module, kind = lm.norms[path]
    scale = record.norm_scales[path]
    return _Norm(module, kind, scale.movedim(norm_position_axis(record, path), 1).reshape(-1))


class _Layer:
    """One layer's modules and frozen constants."""

    def __init__(self, lm, record: ForwardRecord, layer: int, value: nn.Linear, output: nn.Linear):
        self.lm, self.record, self.layer = lm, record, layer
        self.value_projection, self.output_projection = value, output
        ad = lm.adapter
        self.pre_attention = self.norm(ad.layer_pre_attention_norm)
        self.pre_mlp = self.norm(ad.layer_pre_mlp_norm)
        self.post_attention = self.norm(ad.layer_post_attention_norm) if ad.layer_post_attention_norm else None
        self.n_kv_heads = self._n_kv_heads()
        head_dim = int(value.out_features // self.n_kv_heads)
        self.n_heads = int(output.in_features // head_dim)
        self.shape = (int(output.out_features), int(output.in_features), int(value.out_features), self.n_heads, head_dim)

    @classmethod
    def of(cls, lm, record: ForwardRecord, layer: int) -> "_Layer | None":
        if layer not in record.attention_states and layer not in record.attention_patterns:
            return None
        try:
            value = lm.layer_module(layer, lm.adapter.layer_value_projection)
            output = lm.layer_module(layer, lm.adapter.layer_attention_output)
        except UnsupportedArchitectureError:  # a variant of the layout: autograd handles it
            return None
        if not (isinstance(value, nn.Linear) and isinstance(output, nn.Linear)):
            return None
        return cls(lm, record, layer, value, output)

    def _n_kv_heads(self) -> int:
        state = self.record.attention_states.get(self.layer)
        if state is not None:
            return state.n_kv_heads
        config = self.lm.text_config
        return int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)

    def norm(self, part: str) -> _Norm:
        return _norm_of(self.lm, self.record, f"{self.lm.adapter.layers}.{self.layer}.{part}")

    def post_scale(self, positions: torch.Tensor) -> torch.Tensor | None:
        return None if self.post_attention is None else self.post_attention.scale[positions]

    def to_residual(self, input_hook: str, positions: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """The cotangent moved from the input hook back to the residual stream after attention
        (the pre-MLP norm's input) at each target's position."""
        if input_hook == A.HOOK_RESID_MID:
            return vectors
        norm = self.pre_mlp
        return norm.vjp(vectors, norm.scale[positions, None], self.lm.dtype,
                        normalized=input_hook == A.HOOK_LN2_NORMALIZED)

    def head_cotangents(self, vectors: torch.Tensor, post_scale: torch.Tensor | None,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """`[N, 1, H, hd]` in `dtype`: cotangents `vectors [N, d]` on the residual stream taken back
        to the heads' outputs (the output projection's input), through the post-attention norm at
        `post_scale [N]` (None: at unit scale, the caller scales the coefficients)."""
        if self.post_attention is not None:
            scale = (post_scale[:, None] if post_scale is not None
                     else torch.ones(vectors.shape[0], 1, dtype=torch.float32, device=vectors.device))
            vectors = self.post_attention.vjp(vectors, scale, self.lm.dtype)
        weight = self.output_projection.weight  # [d, H·hd]: the transpose is a plain product
        grad = torch.matmul(vectors.to(weight.dtype), weight)
        return grad.to(dtype).view(vectors.shape[0], 1, self.n_heads, -1)

    def value_input(self, values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """`[N, d]`: cotangents `[N, KV·hd]` at the value projection's output taken back through
        it and the pre-attention norm at inverse scales `scale [N]`."""
        weight = self.value_projection.weight  # [KV·hd, d]
        projected = torch.matmul(values.to(weight.dtype), weight)
        return self.pre_attention.vjp(projected, scale[:, None], self.lm.dtype)

    def value_vectors(self, heads: torch.Tensor) -> torch.Tensor:
        """`[B, r, H, d]` float32: head cotangents `heads [B, r, H, hd]` taken back through the
        value projection (each head's key/value rows) and the pre-attention norm at unit scale."""
        batch, rank, n_heads, head_dim = heads.shape
        weight = self.value_projection.weight.float().view(-1, head_dim, self.value_projection.in_features)
        group = n_heads // weight.shape[0]
        per_head = weight.repeat_interleave(group, dim=0)  # [H, hd, d]
        projected = torch.einsum("brhe,hed->brhd", heads, per_head)
        unit = torch.ones(batch * rank * n_heads, 1, dtype=torch.float32, device=heads.device)
        grad = self.pre_attention.vjp(projected.reshape(unit.shape[0], -1), unit, self.lm.dtype)
        return grad.float().view(batch, rank, n_heads, -1)


def _points(positions: torch.Tensor, length: int) -> torch.Tensor:
    """`[B, length, 1]` coefficients: 1 at each element's own position, 0 elsewhere."""
    out = torch.zeros(positions.shape[0], length, 1, device=positions.device)
    out[torch.arange(positions.shape[0], device=positions.device), positions, 0] = 1.0
    return out


def pattern_rows(state: AttentionState, positions: torch.Tensor, length: int) -> torch.Tensor:
    """`[H, B, length]` float32: rows `positions` of the frozen pattern, keys below `length`,
    recomputed from the state the way its blocks are (scaling, soft-cap, row max and sum, mask)."""
    kv, rep = state.n_kv_heads, state.n_heads // state.n_kv_heads
    count = int(positions.shape[0])
    query = state.query[:, positions].reshape(kv, rep * count, -1)
    scores = torch.matmul(query, state.key[:, :length].transpose(1, 2)) * state.scaling
    if state.softcap is not None:
        scores = torch.tanh(scores / state.softcap) * state.softcap
    scores = scores.float().view(state.n_heads, count, length)
    probs = torch.exp(scores - state.row_max[:, positions, None]) / state.row_sum[:, positions, None]
    if state.mask is not None:
        allowed = state.mask[positions, :length]
    else:
        keys = torch.arange(length, device=state.key_start.device)
        allowed = (keys[None] >= state.key_start[positions, None]) & (keys[None] < state.key_stop[positions, None])
    probs = probs.masked_fill(~allowed, 0.0)
    return probs.to(state.dtype).float()
