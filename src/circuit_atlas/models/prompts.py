"""Turning a prompt into token ids, with the reference library's special-token rule.

Reference attribution-algorithm.md §2.1: a string is tokenised without special tokens, then one
special token is prepended unless the first id already is one (the first truthy id among bos,
pad, eos). Gemma-3 `-it` models instead require the chat prefix `<bos><start_of_turn>user\n`,
and positions 0-3 are then "zeroed positions". Explicit ids are used exactly as given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from circuit_atlas.errors import PromptError

GEMMA3_IT_PREFIX = (2, 105, 2364, 107)


def is_gemma3_it(name: str) -> bool:
    lowered = name.lower().rstrip("/")
    return "gemma-3" in lowered and lowered.endswith("-it")


def special_prefix_id(tokenizer) -> int | None:
    """First truthy id among bos, pad, eos (an id of 0 is skipped, as in the reference)."""
    for attr in ("bos_token_id", "pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value:
            return int(value)
    return None


def to_ids(
    prompt: str | Sequence[int] | torch.Tensor,
    tokenizer,
    *,
    vocab_size: int,
    max_positions: int | None,
    model_name: str,
) -> torch.Tensor:
    """Token ids `[P]` (int64, CPU) for a prompt, checked against the model's limits."""
    if isinstance(prompt, str):
        ids = _string_ids(prompt, tokenizer)
    else:
        ids = _explicit_ids(prompt)
    if ids.numel() == 0:
        raise PromptError("the prompt is empty: it gave no tokens")
    bad = ids[(ids < 0) | (ids >= vocab_size)]
    if bad.numel():
        raise PromptError(
            f"token id {int(bad[0])} is outside the vocabulary [0, {vocab_size}) of model {model_name!r}"
        )
    if max_positions is not None and ids.numel() > max_positions:
        raise PromptError(
            f"the prompt has {ids.numel()} tokens, more than model {model_name!r} accepts "
            f"({max_positions} positions)"
        )
    if is_gemma3_it(model_name) and tuple(ids[:4].tolist()) != GEMMA3_IT_PREFIX:
        raise PromptError(
            f"prompts for instruction-tuned Gemma-3 ({model_name!r}) must start with "
            f"'<bos><start_of_turn>user\\n' (ids {list(GEMMA3_IT_PREFIX)}), got {ids[:4].tolist()}"
        )
    return ids


def _string_ids(prompt: str, tokenizer) -> torch.Tensor:
    if not prompt:
        raise PromptError("the prompt is an empty string")
    if tokenizer is None:
        raise PromptError("this model has no tokenizer; pass token ids instead of a string")
    ids = list(tokenizer.encode(prompt, add_special_tokens=False))
    if not ids:
        raise PromptError(f"the prompt {prompt!r} gave no tokens")
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    prefix = special_prefix_id(tokenizer)
    if prefix is not None and ids[0] not in special:
        ids = [prefix] + ids
    return torch.tensor(ids, dtype=torch.long)


def _explicit_ids(prompt) -> torch.Tensor:
    try:
        ids = torch.as_tensor(prompt)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise PromptError(f"prompt must be a string or a sequence of token ids: {exc}") from None
    if ids.numel() == 0:
        raise PromptError("the prompt is empty: no token ids given")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise PromptError(f"token ids must be integers, got dtype {ids.dtype}")
    ids = ids.squeeze()
    if ids.dim() == 0:
        ids = ids.reshape(1)
    if ids.dim() != 1:
        raise PromptError(f"token ids must be 1-D (one prompt), got shape {tuple(ids.shape)}")
    return ids.to(device="cpu", dtype=torch.long)
