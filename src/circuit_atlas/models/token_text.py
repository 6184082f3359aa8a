"""How one token id reads inside running text, word-boundary space included.

Why not `tokenizer.decode([id])`: SentencePiece-style decoders (Metaspace, Gemma, Llama-2) drop the
word-start marker of the *first* decoded token, so every token decoded on its own loses its leading
space and dashboards that join tokens glue words together ("beaumontliesin"). Decoding the token
after a fixed anchor token and removing the anchor's text gives the string the token contributes in
the middle of a sentence (" lies"), for byte-level BPE tokenizers too (where it changes nothing).
"""

from __future__ import annotations

from typing import Any, Sequence

# Decoded in front of each token; any plain word works, it only has to decode to a stable prefix.
_ANCHOR_TEXT = "a"


def _anchor_id(tokenizer: Any) -> int | None:
    try:
        ids = tokenizer.encode(_ANCHOR_TEXT, add_special_tokens=False)
    except Exception:  # tokenizers without `encode` keyword support fall back to plain decoding
        return None
    return int(ids[0]) if len(ids) == 1 else None


def _strip_anchor(with_anchor: str, anchor: str, alone: str) -> str:
    return with_anchor[len(anchor):] if with_anchor.startswith(anchor) else alone


def token_display_strings(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """The in-text string of each id in `ids` (leading space kept where the token starts a word).

    Ids the tokenizer cannot decode become `<id N>` rather than failing the whole list, because
    vocabularies often have more rows in the embedding than entries in the tokenizer.
    """
    ids = [int(i) for i in ids]
    anchor = _anchor_id(tokenizer)
    try:
        alone = [str(s) for s in tokenizer.batch_decode([[i] for i in ids])]
        if anchor is None:
            return alone
        anchor_text = str(tokenizer.decode([anchor]))
        paired = tokenizer.batch_decode([[anchor, i] for i in ids])
        special = set(getattr(tokenizer, "all_special_ids", ()) or ())
        # Special tokens (<bos>, <eos>) are markers, not words: they read the same anywhere.
        return [a if i in special else _strip_anchor(str(p), anchor_text, a)
                for i, p, a in zip(ids, paired, alone)]
    except Exception:  # some tokenizers raise on ids past their vocabulary: go one by one
        if len(ids) == 1:
            return [f"<id {ids[0]}>"]
        return [token_display_strings(tokenizer, [i])[0] for i in ids]
