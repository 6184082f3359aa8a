"""The demo model's word-level tokenizer, built offline with the `tokenizers` library.

Why word level: every toy-world entity is one token, so each two-hop answer is a single next-token
prediction and graph nodes read as whole words. Digits are split one per token (and '+' / '='
isolated) because addition is far easier to learn digit by digit. Words carry a leading "▁" as in
SentencePiece, so decoding restores the spaces exactly.

Special ids: <pad>=0, <bos>=1, <eos>=2, <unk>=3. BOS is deliberately non-zero: the prompt
tokenisation rule prepends the first *truthy* id among bos/pad/eos, so an id of 0 would be skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
SPACE = "▁"
SYMBOLS = tuple("0123456789") + ("+", "=")


def build_vocab(words: Iterable[str]) -> dict[str, int]:
    """Specials, the bare space marker (it precedes a number), digits and symbols, then words."""
    vocab: dict[str, int] = {}
    for token in (*SPECIAL_TOKENS, SPACE, *SYMBOLS, *(SPACE + w for w in sorted(set(words)))):
        vocab.setdefault(token, len(vocab))
    return vocab


def build_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """A transformers fast tokenizer over `words`; `tokenizer("...")` prepends <bos>."""
    vocab = build_vocab(words)
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Split("+", "isolated"),
        pre_tokenizers.Split("=", "isolated"),
    ])
    core.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="always")
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>", model_max_length=64,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: str | Path) -> None:
    """Write the tokenizer in transformers format (tokenizer.json + configs)."""
    tokenizer.save_pretrained(str(directory))
