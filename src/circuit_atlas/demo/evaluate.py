"""Accuracy of a causal LM on the toy world's evaluation sets.

Why a module of its own: the training script reports these figures, the bundle test checks them
on the shipped model, and the demo's case studies quote them; all three must measure the same way.
Prompts are tokenised with the tokenizer's own BOS rule (as a user would call it), and answers are
compared as *tokens*, so "austin" must be the single top next token, not merely a likely one.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch

from circuit_atlas.errors import PromptError

_DIGITS = frozenset("0123456789")


def _batches_by_length(token_lists: Sequence[list[int]], batch_size: int):
    """Yield (indices, LongTensor[B,P]) of equal-length prompts, so no padding is needed."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, ids in enumerate(token_lists):
        groups[len(ids)].append(i)
    for _, indices in sorted(groups.items()):
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            yield chunk, torch.tensor([token_lists[i] for i in chunk], dtype=torch.long)


def answer_token_id(tokenizer, answer: str) -> int:
    """The id of the single token that spells ` answer`; a multi-token answer is a user error."""
    ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        raise PromptError(f"answer {answer!r} is not a single known token of the tokenizer "
                          f"(got ids {ids})")
    return ids[0]


@torch.no_grad()
def next_token_predictions(model, tokenizer, prompts: Sequence[str],
                           batch_size: int = 64) -> list[int]:
    """The argmax next-token id after each prompt (BOS prepended by the tokenizer)."""
    token_lists = [tokenizer(p)["input_ids"] for p in prompts]
    predictions = [0] * len(prompts)
    for indices, batch in _batches_by_length(token_lists, batch_size):
        logits = model(input_ids=batch.to(model.device)).logits[:, -1]
        for i, token in zip(indices, logits.argmax(-1).tolist()):
            predictions[i] = token
    return predictions


def next_token_accuracy(model, tokenizer, prompts: Sequence[str], answers: Sequence[str],
                        batch_size: int = 64) -> float:
    """Share of prompts whose top next token is exactly the answer word."""
    if not prompts:
        raise PromptError("next_token_accuracy needs at least one prompt")
    targets = [answer_token_id(tokenizer, a) for a in answers]
    predicted = next_token_predictions(model, tokenizer, prompts, batch_size)
    return sum(p == t for p, t in zip(predicted, targets)) / len(prompts)


@torch.no_grad()
def greedy_digits(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 4,
                  batch_size: int = 128) -> list[str]:
    """Greedy continuation of each prompt, kept while it produces digit tokens.

    Why stop at the first non-digit: a sum ends where the model emits <eos> (or anything else);
    "68" followed by a stray "1" must count as wrong, so the stop is decided by the model.
    """
    token_lists = [tokenizer(p)["input_ids"] for p in prompts]
    outputs = [""] * len(prompts)
    for indices, batch in _batches_by_length(token_lists, batch_size):
        batch = batch.to(model.device)
        texts = [""] * len(indices)
        alive = [True] * len(indices)
        for _ in range(max_new_tokens + 1):
            next_ids = model(input_ids=batch).logits[:, -1].argmax(-1)
            for j, token in enumerate(tokenizer.convert_ids_to_tokens(next_ids.tolist())):
                if alive[j] and token in _DIGITS:
                    texts[j] += token
                else:
                    alive[j] = False
            if not any(alive):
                break
            batch = torch.cat([batch, next_ids[:, None]], dim=1)
        for i, text in zip(indices, texts):
            outputs[i] = text
    return outputs


def sequence_accuracy(model, tokenizer, prompts: Sequence[str], answers: Sequence[str]) -> float:
    """Share of prompts whose greedy digit continuation equals the answer exactly."""
    if not prompts:
        raise PromptError("sequence_accuracy needs at least one prompt")
    produced = greedy_digits(model, tokenizer, prompts, max_new_tokens=max(map(len, answers)))
    return sum(p == a for p, a in zip(produced, answers)) / len(prompts)
