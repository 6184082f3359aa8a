"""Shared fixtures: a tiny seeded Llama and a random word corpus (no downloads)."""

import random

import pytest
import torch


@pytest.fixture(scope="module")
def tiny_lm():
    from circuit_atlas.models.tiny import tiny_language_model

    torch.set_num_threads(1)
    return tiny_language_model("llama", n_layers=2, d_model=16, seed=0)


def _word_texts(n_docs: int, seed: int = 0, min_words: int = 5,
                max_words: int = 40) -> list[str]:
    from circuit_atlas.models.tiny import WORDS

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS[:60]) for _ in range(rng.randint(min_words, max_words)))
            for _ in range(n_docs)]


@pytest.fixture
def word_texts():
    """`word_texts(n_docs, seed=0)`: random documents over the tiny tokenizer's words."""
    return _word_texts
