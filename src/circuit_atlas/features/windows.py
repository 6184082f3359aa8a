"""Documents to context windows, and windows to padded batches.

Each document is tokenised without special tokens and cut into consecutive windows of at most
`context_len` tokens; every window starts with the model's special prefix token (BOS, by the
prompt rule `models.prompts.special_prefix_id`, `docs/algorithm.md` §2.1), so every window looks like a prompt the
tracer sees, and position 0 is the BOS attention sink. The first `n_zeroed` positions of every
window (position 0; 0-3 for Gemma-3 `-it`) carry no feature statistics, exactly as attribution
has no feature nodes there. A window whose tokens are all zeroed positions is skipped. When the
tokenizer has no special token, windows hold `context_len` document tokens and the first one of
each window is a zeroed position.

Windows of one document do not overlap, so every document token is counted once; the price is
that a token early in its window sees little left context (the dashboard shows the same context
the model saw). Batches are right-padded: attention is causal, so padding never changes the
activations of real tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from circuit_atlas.features.errors import FeatureBuildError
from circuit_atlas.features.keys import MAX_DOCUMENTS, MAX_WINDOWS_PER_DOCUMENT, occurrence_id
from circuit_atlas.models.prompts import special_prefix_id


@dataclass(frozen=True)
class Window:
    """Tokens of window `index` of document `doc` (prefix token included)."""

    doc: int
    index: int
    ids: tuple[int, ...]


@dataclass(frozen=True)
class Cursor:
    """The first window not yet processed: window `window` of document `doc`."""

    doc: int = 0
    window: int = 0


@dataclass
class Batch:
    """Padded windows: `tokens`, `valid` (statistics positions) and `oids` are `[B, P]`."""

    windows: list[Window]
    tokens: torch.Tensor
    valid: torch.Tensor
    oids: torch.Tensor
    lengths: torch.Tensor

    @property
    def n_tokens(self) -> int:
        return int(self.valid.sum())


class Windower:
    """Cuts documents of a corpus into windows, resuming at any `Cursor`."""

    def __init__(self, tokenizer, context_len: int, n_zeroed: int) -> None:
        if context_len <= n_zeroed:
            raise FeatureBuildError(
                f"--context-len {context_len} leaves no token with statistics: the first {n_zeroed} "
                "position(s) of every window are zeroed"
            )
        self.tokenizer = tokenizer
        self.context_len = context_len
        self.n_zeroed = n_zeroed
        self.prefix = special_prefix_id(tokenizer)

    def content_ids(self, text: str) -> list[int]:
        """Token ids of a document, without the special prefix."""
        ids = list(self.tokenizer.encode(text, add_special_tokens=False))
        if ids and self.prefix is not None and ids[0] == self.prefix:
            ids = ids[1:]
        return ids

    def document_windows(self, doc: int, text: str, first_window: int = 0) -> Iterator[Window]:
        """Windows `first_window, ...` of one document (windows with only zeroed positions skipped)."""
        content = self.content_ids(text)
        prefix = () if self.prefix is None else (self.prefix,)
        step = self.context_len - len(prefix)
        n_windows = -(-len(content) // step)
        if n_windows > MAX_WINDOWS_PER_DOCUMENT:
            raise FeatureBuildError(
                f"document {doc} has {len(content)} tokens, more than {MAX_WINDOWS_PER_DOCUMENT} "
                f"windows of {self.context_len}; split it or raise --context-len"
            )
        for index in range(first_window, n_windows):
            ids = prefix + tuple(content[index * step:(index + 1) * step])
            if len(ids) > self.n_zeroed:
                yield Window(doc, index, ids)

    def windows(self, documents: Iterator[str], start: Cursor) -> Iterator[Window]:
        """Every window from `start` on; `documents` must begin at document `start.doc`."""
        for doc, text in enumerate(documents, start=start.doc):
            if doc >= MAX_DOCUMENTS:
                raise FeatureBuildError(f"the corpus has more than {MAX_DOCUMENTS} documents")
            first = start.window if doc == start.doc else 0
            yield from self.document_windows(doc, text, first)


def make_batch(windows: Sequence[Window], n_zeroed: int, pad_id: int) -> Batch:
    """Right-padded `[B, P]` tensors for a list of windows (CPU)."""
    width = max(len(w.ids) for w in windows)
    tokens = torch.full((len(windows), width), pad_id, dtype=torch.long)
    valid = torch.zeros((len(windows), width), dtype=torch.bool)
    oids = torch.zeros((len(windows), width), dtype=torch.long)
    positions = torch.arange(width, dtype=torch.long)
    for row, window in enumerate(windows):
        tokens[row, :len(window.ids)] = torch.tensor(window.ids, dtype=torch.long)
        valid[row, n_zeroed:len(window.ids)] = True
        oids[row] = occurrence_id(window.doc, window.index, 0) + positions
    lengths = torch.tensor([len(w.ids) for w in windows], dtype=torch.long)
    return Batch(list(windows), tokens, valid, oids, lengths)


def truncate(window: Window, n_tokens: int, n_zeroed: int) -> Window:
    """The window cut to `n_tokens` statistics positions (for the --max-tokens budget)."""
    return Window(window.doc, window.index, window.ids[:n_zeroed + n_tokens])


def counted_tokens(window: Window, n_zeroed: int) -> int:
    """Positions of a window that carry statistics."""
    return max(len(window.ids) - n_zeroed, 0)
