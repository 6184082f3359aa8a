"""What one forward pass freezes, and what it records.

`FreezeSpec` says, separately for attention patterns and norm denominators, whether they are
computed live, computed but detached from autograd (the local replacement model used by
attribution), or replayed from an earlier `ForwardRecord` (interventions: "same patterns as the
clean run", and linearity checks). `ForwardRecord` is what a pass returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from circuit_atlas.errors import CircuitAtlasError, ShapeMismatchError
from circuit_atlas.models.attention import AttentionState

LIVE = "live"
DETACH = "detach"
REPLAY = "replay"
_MODES = (LIVE, DETACH, REPLAY)


@dataclass
class ForwardRecord:
    """Tensors of one forward pass over `tokens [B,P]` (see docs/architecture.md).

    `inputs[l]` / `outputs[l]` are the values at the input / output hook of layer `l`; `outputs`
    holds the value after any `output_edit` (the one that flowed on), so gradients taken with
    respect to it are gradients at the output hook. `attention_patterns[l]` is `[B,H,P,P]`
    (softmax output, after any attention soft-cap and mask). `norm_scales[path]` is the float32
    inverse denominator `1/sqrt(var+eps)` of the norm module at that dotted path, `[B,P,1]` (or
    `[B,P,H,1]` or `[B,H,P,1]` for per-head q/k norms, as the family lays them out:
    `norm_position_axes[path]` says which axis holds the positions, see `norm_position_axis`).
    `hooks[name][l]` holds extra hook values asked for with
    `record_hooks`. A pass asked for `attention_states` records `attention_states[l]` (an
    `AttentionState`: `O(P)` per layer, from which the pattern is recomputed block by block)
    instead of patterns; replaying such a record freezes attention just the same.
    `residuals[l]` `[B,P,d]` (when asked for) is the residual stream entering layer `l`, and
    `residuals[L]` the one entering the final norm: the boundaries at which a backward pass can
    be taken one layer at a time.
    """

    tokens: torch.Tensor
    embeddings: torch.Tensor
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]
    final_hidden: torch.Tensor
    logits: torch.Tensor | None
    attention_patterns: dict[int, torch.Tensor] = field(default_factory=dict)
    norm_scales: dict[str, torch.Tensor] = field(default_factory=dict)
    hooks: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    attention_states: dict[int, AttentionState] = field(default_factory=dict)
    residuals: list[torch.Tensor] = field(default_factory=list)
    norm_position_axes: dict[str, int] = field(default_factory=dict)


def norm_position_axis(record: ForwardRecord, path: str) -> int:
    """The axis of `record.norm_scales[path]` that holds the positions.

    A pass records it (per-head q/k norms see `[B,P,H,d]` in Qwen3 but `[B,H,P,d]` in Gemma-3);
    for a record built by hand it is the one axis between batch and the trailing 1 whose size is
    the prompt length, and a record where that is ambiguous (as many heads as positions) is refused.
    """
    if path in record.norm_position_axes:
        return record.norm_position_axes[path]
    scale = record.norm_scales[path]
    n_positions = record.tokens.shape[-1]
    candidates = [axis for axis in range(1, scale.dim() - 1) if scale.shape[axis] == n_positions]
    if len(candidates) != 1:
        raise ShapeMismatchError(
            f"cannot tell which axis of the norm scale of {path!r} {tuple(scale.shape)} holds the "
            f"{n_positions} positions; record it in `norm_position_axes`"
        )
    return candidates[0]


def prefix_record(record: ForwardRecord, length: int) -> ForwardRecord:
    """The record of the first `length` positions of a pass, without re-running anything.

    Attention is causal and norms act per position, so the first `length` rows of every pattern
    and scale (cut along its position axis, which per-head norm scales may have second) are exactly those a pass over the prefix would compute; a frozen pass over a
    prefix can therefore replay them. Attribution uses this to run targets at early positions
    through a shorter sequence.
    """
    if not 1 <= length <= record.tokens.shape[-1]:
        raise ShapeMismatchError(f"prefix length {length} is outside 1..{record.tokens.shape[-1]}")

    def cut(tensor: torch.Tensor) -> torch.Tensor:
        return tensor[:, :length]

    return ForwardRecord(
        tokens=cut(record.tokens),
        embeddings=cut(record.embeddings),
        inputs=[cut(t) for t in record.inputs],
        outputs=[cut(t) for t in record.outputs],
        final_hidden=cut(record.final_hidden),
        logits=None if record.logits is None else cut(record.logits),
        attention_patterns={k: v[..., :length, :length] for k, v in record.attention_patterns.items()},
        norm_scales={k: v.narrow(norm_position_axis(record, k), 0, length) for k, v in record.norm_scales.items()},
        norm_position_axes=dict(record.norm_position_axes),
        hooks={k: [cut(t) for t in v] for k, v in record.hooks.items()},
        attention_states={k: v.prefix(length) for k, v in record.attention_states.items()},
        residuals=[cut(t) for t in record.residuals],
    )


@dataclass(frozen=True)
class FreezeSpec:
    """How attention patterns and norm denominators behave in a pass.

    attention / norms: "live" (ordinary), "detach" (computed in this pass, no gradient through
    them) or "replay" (taken from `replay_from`; a record with batch 1 broadcasts over any batch).
    Replayed values carry no gradient.
    """

    attention: str = LIVE
    norms: str = LIVE
    replay_from: ForwardRecord | None = None

    def __post_init__(self) -> None:
        for name in ("attention", "norms"):
            mode = getattr(self, name)
            if mode not in _MODES:
                raise CircuitAtlasError(f"FreezeSpec.{name} must be one of {_MODES}, got {mode!r}")
        if REPLAY in (self.attention, self.norms) and self.replay_from is None:
            raise CircuitAtlasError("FreezeSpec with mode 'replay' needs replay_from=<ForwardRecord>")

    @classmethod
    def live(cls) -> "FreezeSpec":
        return cls()

    @classmethod
    def detached(cls) -> "FreezeSpec":
        """Attention patterns and norm denominators detached: the local replacement model."""
        return cls(attention=DETACH, norms=DETACH)

    @classmethod
    def replayed(cls, record: ForwardRecord) -> "FreezeSpec":
        """Patterns and denominators copied from `record`: the same linear map as `detached`."""
        return cls(attention=REPLAY, norms=REPLAY, replay_from=record)


def broadcast_replay(saved: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    """A recorded tensor `[B0,...]` usable for a pass of batch `batch` (B0 must be 1 or batch)."""
    if saved.shape[0] == batch:
        return saved.detach()
    if saved.shape[0] == 1:
        return saved.detach().expand(batch, *saved.shape[1:])
    raise ShapeMismatchError(
        f"cannot replay {what} recorded with batch {saved.shape[0]} in a pass of batch {batch}"
    )
