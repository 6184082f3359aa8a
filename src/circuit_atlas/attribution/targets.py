"""Logit targets: which output directions an attribution graph explains.

A target is a direction `v` in the final-norm output space whose dot product with the last
position's hidden state is the quantity being explained. For a real token it is that token's
unembedding row minus the vocabulary mean (so the graph explains the token's logit relative to the
average logit, which is what the softmax sees); for a custom target it is any vector, e.g. a logit
difference "Austin − Dallas", which needs no centring because the mean cancels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, Union

import torch

from circuit_atlas.errors import AttributionError


@dataclass(frozen=True)
class CustomTarget:
    """An arbitrary direction to explain; `weight` plays the role of a probability in pruning."""

    label: str
    vector: torch.Tensor
    weight: float = 1.0


@dataclass(frozen=True)
class LogitDifference:
    """The difference of two tokens' logits, e.g. `LogitDifference(" Austin", " Dallas")`."""

    positive: Union[str, int]
    negative: Union[str, int]
    weight: float = 1.0


TargetSpec = Union[str, int, CustomTarget, LogitDifference]


@dataclass
class LogitTargets:
    """Resolved targets: one row per target, in the order they appear in the graph."""

    token_ids: torch.Tensor  # [n] int64; virtual ids (>= vocab_size) for custom targets
    labels: list[str]
    probabilities: torch.Tensor  # [n] float32: softmax probability, or the custom weight
    vectors: torch.Tensor  # [n, d] injection directions in final-norm output space

    def __len__(self) -> int:
        return len(self.labels)


def salient_token_ids(
    last_logits: torch.Tensor, max_n_logits: int, desired_logit_prob: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Most likely next tokens until their cumulative probability reaches `desired_logit_prob`.

    Returns (ids, probabilities), most probable first, at most `max_n_logits` of them.
    """
    if max_n_logits < 1:
        raise AttributionError(f"max_n_logits must be at least 1, got {max_n_logits}")
    if not 0.0 < desired_logit_prob <= 1.0:
        raise AttributionError(f"desired_logit_prob must lie in (0, 1], got {desired_logit_prob}")
    probs = torch.softmax(last_logits.float(), dim=-1)
    top_probs, top_ids = torch.topk(probs, min(max_n_logits, probs.shape[-1]))
    cumulative = torch.cumsum(top_probs, dim=0)
    cutoff = int(torch.searchsorted(cumulative, torch.tensor(desired_logit_prob, device=cumulative.device))) + 1
    return top_ids[:cutoff], top_probs[:cutoff]


def resolve_token(tokenizer: Any, token: Union[str, int], vocab_size: int) -> int:
    """A token given as an id or as a string that encodes to exactly one token."""
    if isinstance(token, bool):
        raise AttributionError(f"target {token!r} is neither a token string nor a token id")
    if isinstance(token, int):
        if not 0 <= token < vocab_size:
            raise AttributionError(f"target token id {token} is outside the vocabulary [0, {vocab_size})")
        return token
    if not isinstance(token, str) or token == "":
        raise AttributionError(f"target {token!r} is neither a token string nor a token id")
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        pieces = [tokenizer.decode([i]) for i in ids]
        raise AttributionError(
            f"target {token!r} is not a single token (it encodes to {len(ids)} tokens: {pieces}); "
            "give one token (mind the leading space) or a token id"
        )
    unknown = getattr(tokenizer, "unk_token_id", None)
    if unknown is not None and ids[0] == unknown and token != getattr(tokenizer, "unk_token", None):
        raise AttributionError(f"target {token!r} is not in the vocabulary (it encodes to the unknown token)")
    return int(ids[0])


def build_logit_targets(
    targets: Sequence[TargetSpec] | None,
    *,
    last_logits: torch.Tensor,
    unembedding: torch.Tensor,
    tokenizer: Any,
    max_n_logits: int = 10,
    desired_logit_prob: float = 0.95,
) -> LogitTargets:
    """Resolve the user's `targets` argument into directions, labels and weights."""
    vocab_size = last_logits.shape[-1]
    probs = torch.softmax(last_logits.float(), dim=-1)
    w_u = unembedding.detach().float()
    centred_mean = w_u.mean(dim=0)
    if targets is None:
        ids, _ = salient_token_ids(last_logits, max_n_logits, desired_logit_prob)
        specs: Sequence[TargetSpec] = [int(i) for i in ids]
    else:
        specs = list(targets)
        if not specs:
            raise AttributionError("targets is an empty list; pass None for the most likely tokens")

    token_ids, labels, weights, vectors = [], [], [], []
    for position, spec in enumerate(specs):
        if isinstance(spec, CustomTarget):
            vector = spec.vector.detach().float().reshape(-1).to(w_u.device)
            if vector.shape[0] != w_u.shape[1]:
                raise AttributionError(
                    f"custom target {spec.label!r} has {vector.shape[0]} dimensions, the model has {w_u.shape[1]}"
                )
            if not torch.isfinite(vector).all():
                raise AttributionError(f"custom target {spec.label!r} contains NaN or inf")
            token_ids.append(vocab_size + position)
            labels.append(spec.label)
            weights.append(float(spec.weight))
            vectors.append(vector)
        elif isinstance(spec, LogitDifference):
            pos_id = resolve_token(tokenizer, spec.positive, vocab_size)
            neg_id = resolve_token(tokenizer, spec.negative, vocab_size)
            token_ids.append(vocab_size + position)
            labels.append(f"{tokenizer.decode([pos_id])} − {tokenizer.decode([neg_id])}")
            weights.append(float(spec.weight))
            vectors.append(w_u[pos_id] - w_u[neg_id])
        else:
            token_id = resolve_token(tokenizer, spec, vocab_size)
            token_ids.append(token_id)
            labels.append(tokenizer.decode([token_id]))
            weights.append(float(probs[token_id]))
            vectors.append(w_u[token_id] - centred_mean)
    return LogitTargets(
        token_ids=torch.tensor(token_ids, dtype=torch.long),
        labels=labels,
        probabilities=torch.tensor(weights, dtype=torch.float32),
        vectors=torch.stack(vectors),
    )
