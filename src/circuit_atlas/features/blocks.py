"""Blocks of documents: the unit a build's batches never cross and ranks share out.

Why blocks: a store built by N ranks must equal the one a single process builds, bit for bit.
Activations depend (in the last bits) on the shape and content of the padded batch a window is
computed in, so every window must be computed in the same batch whatever the number of ranks.
Cutting the corpus into blocks of `block_documents` documents and never letting a batch span two
blocks does that: a block's windows form the same batches wherever it is processed. Rank `r` of
`N` processes blocks `r, r + N, r + 2N, ...` ("round" `k` is blocks `kN .. kN + N - 1`).

The token budget (`--max-tokens`) is a prefix of the corpus in document order, so a rank must
know how many counted tokens the blocks before its own hold. After windowing its block of a
round, every rank contributes the block's token count to an all-gather; the counts of the whole
round give each rank the tokens before its block (`Rounds`). The gathers are issued a few rounds
ahead (`lookahead`) and only waited for when a block is about to be processed, so ranks are
coupled through tokenisation, not through each other's forward passes, and a slow block on one
rank does not stall the others. The counts also tell every rank, at the same round, that the
corpus or the budget has ended, so all ranks stop together.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from circuit_atlas.features.windows import Cursor, Window, Windower, counted_tokens, truncate
from circuit_atlas.io.corpus import Corpus

DEFAULT_BLOCK_DOCUMENTS = 64
LOOKAHEAD_ROUNDS = 4


@dataclass
class Block:
    """Block `index` of the corpus: all its windows (prefix token included) and their counted
    tokens; `exhausted` when the corpus ends before the block's first document."""

    index: int
    windows: list[Window]
    tokens: int
    exhausted: bool


def block_of(doc: int, block_documents: int) -> int:
    return doc // block_documents


class BlockReader:
    """The blocks of one rank, in order, from its block of round `first_round` on.

    Reads the corpus once, front to back, skipping the documents of other ranks' blocks.
    """

    def __init__(self, corpus: Corpus, windower: Windower, block_documents: int, *, rank: int = 0,
                 world_size: int = 1, first_round: int = 0) -> None:
        self.windower, self.size = windower, block_documents
        self.rank, self.world_size = rank, world_size
        self.round = first_round
        self.next_doc = self.block_index(first_round) * block_documents
        self.documents = corpus.documents(self.next_doc)
        self.pending: tuple[int, str] | None = None
        self.ended = False

    def block_index(self, round_: int) -> int:
        return round_ * self.world_size + self.rank

    def read(self) -> Block:
        """This rank's block of the next round."""
        index = self.block_index(self.round)
        self.round += 1
        first, stop = index * self.size, (index + 1) * self.size
        windows: list[Window] = []
        seen = False
        for doc, text in self._documents_until(stop):
            if doc < first:
                continue
            seen = True
            windows.extend(self.windower.document_windows(doc, text))
        tokens = sum(counted_tokens(w, self.windower.n_zeroed) for w in windows)
        return Block(index, windows, tokens, exhausted=not seen)

    def _documents_until(self, stop: int) -> Iterator[tuple[int, str]]:
        """(index, text) of the documents before index `stop` not read yet."""
        while not self.ended:
            if self.pending is None:
                text = next(self.documents, None)
                if text is None:
                    self.ended = True
                    return
                self.pending = (self.next_doc, text)
                self.next_doc += 1
            if self.pending[0] >= stop:
                return
            yield self.pending
            self.pending = None


@dataclass
class PlannedBlock:
    """A block to process: `before` counted tokens of the corpus precede it (all ranks)."""

    round: int
    block: Block
    before: int


class Rounds:
    """This rank's blocks with the corpus tokens before each, until the corpus or budget ends.

    `start_round`: the first round to take part in; `tokens_before`: the counted tokens of every
    block of the rounds before it; `known`: this rank's block counts for rounds it finished in an
    earlier run (it takes part in their gathers without reading or processing them again); the
    reader starts at the first round not in `known`. After iteration `end_reason` is "corpus" or
    "max-tokens" and `counts` holds this rank's block count of every round gathered.
    """

    def __init__(self, reader: BlockReader, comm, budget: int | None, *, start_round: int = 0,
                 tokens_before: int = 0, known: dict[int, int] | None = None,
                 lookahead: int = LOOKAHEAD_ROUNDS) -> None:
        self.reader, self.comm, self.budget = reader, comm, budget
        self.next_round = start_round
        self.tokens_before = tokens_before
        self.known = dict(known or {})
        self.lookahead = lookahead if comm.world_size > 1 else 0
        self.counts: dict[int, int] = dict(self.known)
        self.end_reason: str | None = None
        self.current_round = start_round
        self.round_start_tokens = tokens_before  # corpus tokens before the current round

    def __iter__(self) -> Iterator[PlannedBlock]:
        pending: deque = deque()
        issued = self.next_round
        try:
            while True:
                while len(pending) <= self.lookahead:
                    pending.append(self._issue(issued))
                    issued += 1
                round_, block, handle = pending.popleft()
                counts, exhausted = handle.wait()
                self.current_round = round_
                if self.budget is not None and self.tokens_before >= self.budget:
                    self.end_reason = "max-tokens"
                    return
                if all(exhausted):
                    self.end_reason = "corpus"
                    return
                before = self.tokens_before + sum(counts[:self.comm.rank])
                self.round_start_tokens = self.tokens_before
                self.tokens_before += sum(counts)
                if block is not None:
                    yield PlannedBlock(round_, block, before)
        finally:
            if self.end_reason is not None:  # every rank issued the same gathers: finish them
                for _, _, handle in pending:
                    handle.wait()

    def _issue(self, round_: int):
        if round_ in self.known:
            block, count, exhausted = None, self.known[round_], False
        else:
            if self.reader.round != round_:
                raise AssertionError(f"block reader at round {self.reader.round}, expected {round_}")
            block = self.reader.read()
            count, exhausted = block.tokens, block.exhausted
        self.counts[round_] = count
        return round_, block, self.comm.gather_counts(count, exhausted)


def windows_to_process(planned: PlannedBlock, cursor: Cursor, budget: int | None,
                       n_zeroed: int) -> Iterator[Window]:
    """The windows of a block not processed yet (at or after `cursor`), within the budget: the
    window that reaches the budget is cut to it and is the last."""
    used = planned.before
    if budget is not None and used >= budget:
        return
    for window in planned.block.windows:
        counted = counted_tokens(window, n_zeroed)
        done = (window.doc, window.index) < (cursor.doc, cursor.window)
        if budget is not None and used + counted >= budget:
            if not done:
                yield truncate(window, budget - used, n_zeroed)
            return
        used += counted
        if not done:
            yield window


def block_tokens_before(corpus: Corpus, windower: Windower, cursor: Cursor,
                        block_documents: int) -> int:
    """Counted tokens of the windows of `cursor`'s block that come before it (what a resumed
    single-process build already did of that block)."""
    first = block_of(cursor.doc, block_documents) * block_documents
    total = 0
    for doc, text in enumerate(corpus.documents(first), start=first):
        if doc > cursor.doc:
            break
        for window in windower.document_windows(doc, text):
            if (window.doc, window.index) >= (cursor.doc, cursor.window):
                break
            total += counted_tokens(window, windower.n_zeroed)
    return total
