"""Token display strings: joined in order they must read as the decoded text, spaces included."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from circuit_atlas.demo import bundle
from circuit_atlas.models.tiny import tiny_tokenizer
from circuit_atlas.models.token_text import token_display_strings

SENTENCES = ["beaumont lies in a region whose capital is austin",
             "the capital of the region containing dallas is austin"]


def _byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE trained in memory on a few words."""
    from tokenizers import trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(SENTENCES * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core)


def _demo_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bundle.demo_model_path()))


TINY_SENTENCES = ["the capital of France is Paris", "he saw the big red house ."]


@pytest.mark.parametrize("make, sentences", [(_demo_tokenizer, SENTENCES),
                                             (_byte_level_tokenizer, SENTENCES),
                                             (tiny_tokenizer, TINY_SENTENCES)])
def test_joined_display_strings_read_as_the_decoded_text(make, sentences):
    tokenizer = make()
    for sentence in sentences:
        ids = tokenizer.encode(sentence, add_special_tokens=False)
        joined = "".join(token_display_strings(tokenizer, ids))
        decoded = tokenizer.decode(ids)
        # Only the very first token's word-start space may differ from the decoded text.
        assert joined.strip() == decoded.strip()
        assert " " in joined.strip()  # words are not glued together


def test_sentencepiece_style_tokens_keep_their_word_start_space():
    tokenizer = _demo_tokenizer()
    ids = tokenizer.encode("dallas is", add_special_tokens=False)
    assert [tokenizer.decode([i]) for i in ids] == ["dallas", "is"]  # the bug this module fixes
    assert token_display_strings(tokenizer, ids) == [" dallas", " is"]


class _RaisingTokenizer:
    """Decodes ids below 10 as letters and raises on the others, like tokenizers whose embedding
    has more rows than their vocabulary."""

    all_special_ids: list[int] = []

    def encode(self, text, add_special_tokens=False):
        return [0]  # the anchor "a"

    def decode(self, ids):
        if any(i >= 10 for i in ids):
            raise IndexError("id out of range")
        return " ".join("abcdefghij"[i] for i in ids)

    def batch_decode(self, batch):
        return [self.decode(ids) for ids in batch]


def test_undecodable_ids_are_named_not_raised():
    assert token_display_strings(_RaisingTokenizer(), [1, 12, 2]) == [" b", "<id 12>", " c"]


def test_special_tokens_read_as_themselves():
    tokenizer = tiny_tokenizer()
    assert token_display_strings(tokenizer, [tokenizer.bos_token_id]) == [tokenizer.bos_token]
