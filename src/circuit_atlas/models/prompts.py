"""Turning a prompt into token ids, with circuit-tracer's special-token rule.

`docs/algorithm.md` §2.1: a string is tokenised without special tokens, then one special token is
prepended unless the first id already is one (the first truthy id among bos, pad, eos). Models
with a required chat prefix (instruction-tuned Gemma-3: `<bos><start_of_turn>user\n`, found by
the family adapter) must get ids that start with it; those positions are then "zeroed
positions". Explicit ids are used exactly as given.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from circuit_atlas.errors import PromptError, PromptWarning

# What a prompt may be: text, or token ids (a list or a 1-D tensor).
Prompt = str | Sequence[int] | torch.Tensor


def special_prefix_id(tokenizer) -> int | None:
    """First truthy id among bos, pad, eos (an id of 0 is skipped, as circuit-tracer does)."""
    for attr in ("bos_token_id", "pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value:
            return int(value)
    return None


def to_ids(
    prompt: Prompt,
    tokenizer,
    *,
    vocab_size: int,
    max_positions: int | None,
    model_name: str,
    required_prefix: Sequence[int] | None = None,
) -> torch.Tensor:
    """Token ids `[P]` (int64, CPU) for a prompt, checked against the model's limits.

    `required_prefix`: ids the prompt must start with (a chat header, see
    `models.adapters.ChatPrefix`); `model_name` names the model in messages."""
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
    if required_prefix is not None:
        prefix = tuple(required_prefix)
        if tuple(ids[: len(prefix)].tolist()) != prefix:
            raise PromptError(
                f"prompts for the instruction-tuned model {model_name!r} must start with its chat "
                f"header (ids {list(prefix)}, '<bos><start_of_turn>user\\n' for Gemma-3), got "
                f"{ids[: len(prefix)].tolist()}"
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
    _warn_unknown_words(prompt, ids, tokenizer)
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


def _warn_unknown_words(prompt: str, ids: list[int], tokenizer) -> None:
    """A `PromptWarning` naming the words that became the unknown token: the graph would
    otherwise explain '<unk>' where the user wrote a word, without saying so. (Tokenizers whose
    unknown token doubles as BOS/EOS/pad, such as GPT-2's, are left alone: that id is not a
    sign of a missing word.)"""
    unk = getattr(tokenizer, "unk_token_id", None)
    others = {getattr(tokenizer, name, None) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
    if unk is None or unk in others or unk not in ids:
        return
    words = _unknown_spans(prompt, tokenizer, unk)
    shown = ", ".join(repr(w) for w in words[:10]) + (", ..." if len(words) > 10 else "")
    count = ids.count(unk)
    warnings.warn(PromptWarning(
        f"{count} word(s) of the prompt are not in the tokenizer's vocabulary and became "
        f"{getattr(tokenizer, 'unk_token', None) or 'the unknown token'}"
        + (f": {shown}" if words else "")), stacklevel=4)


def _unknown_spans(prompt: str, tokenizer, unk: int) -> list[str]:
    """The text of each token that became `unk` (empty when the tokenizer gives no offsets)."""
    try:
        encoded = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
        pairs = zip(encoded["input_ids"], encoded["offset_mapping"])
        return [prompt[start:end].strip() for token, (start, end) in pairs if token == unk]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        return []
