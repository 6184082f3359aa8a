"""The demo tokenizer: one token per word, one per digit, BOS first, exact round trip on disk."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from circuit_atlas.demo import toyworld
from circuit_atlas.demo.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(toyworld.vocabulary_words(toyworld.build_world(0)))


def test_words_are_single_tokens_and_bos_is_first(tok):
    prompt = "the capital of the region containing dallas is"
    ids = tok(prompt)["input_ids"]
    assert ids[0] == tok.bos_token_id != 0  # the prompt rule (docs/algorithm.md §2.1) skips a falsy id
    assert tok.convert_ids_to_tokens(ids[1:]) == ["▁" + w for w in prompt.split()]
    assert tok(prompt, add_special_tokens=False)["input_ids"] == ids[1:]


def test_digits_are_separate_and_text_round_trips(tok):
    tokens = tok.convert_ids_to_tokens(tok("23+45=68", add_special_tokens=False)["input_ids"])
    assert [t for t in tokens if t != "▁"] == list("23+45=68")
    for line in toyworld.generate_corpus(toyworld.build_world(0), 300):
        ids = tok(line)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == line


def test_unknown_words_and_case(tok):
    assert tok("Dallas")["input_ids"] == tok("dallas")["input_ids"]
    assert tok("zzyzx", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]


def test_saved_tokenizer_loads_with_transformers(tok, tmp_path):
    tok.save_pretrained(str(tmp_path))
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    for text in ["the opposite of hot is cold", "le contraire de chaud est", "7+85=92"]:
        assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (1, 2, 0)


def test_words_outside_the_vocabulary_are_warned_about(tok):
    import warnings

    from circuit_atlas.errors import PromptWarning
    from circuit_atlas.models.prompts import to_ids

    def ids(prompt):
        return to_ids(prompt, tok, vocab_size=len(tok), max_positions=None, model_name="demo")

    with pytest.warns(PromptWarning, match=r"2 word\(s\) .* became <unk>: 'atlantis', 'Zorg'"):
        ids("the capital of atlantis is Zorg")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ids("the capital of the region containing dallas is")  # every word known: silent
