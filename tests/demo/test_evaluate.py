"""Accuracy helpers, checked against a stub model whose predictions are fixed by hand."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from circuit_atlas.demo import toyworld
from circuit_atlas.demo.evaluate import (answer_token_id, greedy_digits, next_token_accuracy,
                                         sequence_accuracy)
from circuit_atlas.demo.tokenizer import build_tokenizer
from circuit_atlas.errors import PromptError


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(toyworld.vocabulary_words(toyworld.build_world(0)))


class LookupModel(torch.nn.Module):
    """Predicts `table[tuple(ids)]` as the next token after each sequence (else token 0)."""

    def __init__(self, table: dict[tuple[int, ...], int], vocab: int):
        super().__init__()
        self.table, self.vocab = table, vocab
        self.device = torch.device("cpu")

    def forward(self, input_ids):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for b, row in enumerate(input_ids.tolist()):
            logits[b, -1, self.table.get(tuple(row), 0)] = 1.0
        return SimpleNamespace(logits=logits)


def test_next_token_accuracy_counts_exact_top_token(tok):
    prompts = ["the capital of texas is", "the capital of ohio is", "dallas is in", "a"]
    answers = ["austin", "columbus", "texas", "dog"]
    table = {tuple(tok(prompts[0])["input_ids"]): answer_token_id(tok, "austin"),
             tuple(tok(prompts[1])["input_ids"]): answer_token_id(tok, "austin"),  # wrong
             tuple(tok(prompts[2])["input_ids"]): answer_token_id(tok, "texas")}
    model = LookupModel(table, len(tok))
    assert next_token_accuracy(model, tok, prompts, answers, batch_size=2) == pytest.approx(2 / 4)


def test_greedy_digits_stops_where_the_model_stops(tok):
    def ids(text):
        return tuple(tok(text)["input_ids"])

    digit = {d: tok.convert_tokens_to_ids(d) for d in "0123456789"}
    eos = tok.eos_token_id
    table = {ids("1+2="): digit["3"], ids("1+2=3"): eos,          # right
             ids("9+9="): digit["1"], ids("9+9=1"): digit["8"], ids("9+9=18"): eos,  # right
             ids("5+5="): digit["1"], ids("5+5=1"): digit["0"], ids("5+5=10"): digit["0"]}  # 100
    model = LookupModel(table, len(tok))
    assert greedy_digits(model, tok, ["1+2=", "9+9=", "5+5="]) == ["3", "18", "100"]
    assert sequence_accuracy(model, tok, ["1+2=", "9+9=", "5+5="], ["3", "18", "10"]) \
        == pytest.approx(2 / 3)


def test_bad_answers_and_empty_sets_raise(tok):
    with pytest.raises(PromptError, match="new york"):
        answer_token_id(tok, "new york")
    with pytest.raises(PromptError, match="at least one"):
        next_token_accuracy(None, tok, [], [])
