"""The build loop shared by a whole store and by one rank's shard of it.

Flow: compute the logit effects of this builder's layers (one commit per layer); then run the
corpus block by block (`blocks.py`), in batches of windows that never cross a block, feed each
layer's activations to its `LayerAccumulator`, and commit every `commit_interval` seconds (sooner
when many example rows are waiting).

Resumability: between commits, all changes live in memory (the accumulators and the buffered
example rows of `pending.py`). A commit is one short transaction holding the net example-row
changes, the counts of the features changed since the last commit, and the corpus cursor (next
document and window, tokens done). So the database always holds the exact state after some whole
batch, and a rerun reloads it and continues with the next window; a crash loses at most the work
since the last commit. Since every statistic is merge-order independent (`accumulator.py`), the
finished store does not depend on where (or how often) the run stopped, nor on how many ranks
built it. It does depend on the batch size and block size through floating-point rounding:
padded batches of another shape can change activations in the last bits, so a bit-identical
store needs the same --batch-size, --block-documents and device type.

Only the input hook of each layer is needed, so the forward pass skips the logits and keeps no
attention patterns. Positions where attribution has no feature nodes (position 0, the BOS) are
excluded from every statistic.

A first Ctrl-C stops after the current batch and commits; a second one aborts (the last commit
stays). The environment variable `CIRCUIT_ATLAS_TEST_KILL_AT_COMMIT=N` makes the process kill
itself (SIGKILL) inside its N-th corpus commit, after writing and before COMMIT (with
`CIRCUIT_ATLAS_TEST_KILL_RANK=R`, only on rank R); tests use it to prove that a kill at the worst
moment loses nothing already committed.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from circuit_atlas.features import storage
from circuit_atlas.features.accumulator import LayerAccumulator
from circuit_atlas.features.blocks import BlockReader, PlannedBlock, Rounds, block_of, block_tokens_before, windows_to_process
from circuit_atlas.features.errors import FeatureBuildError
from circuit_atlas.features.logits import logit_effects
from circuit_atlas.features.open_store import progress_dict
from circuit_atlas.features.pending import PendingExamples
from circuit_atlas.features.ranks import SoloRanks, TorchRanks
from circuit_atlas.features.settings import BuildSettings
from circuit_atlas.features.sources import HubDatasetCorpus
from circuit_atlas.features.windows import Batch, Cursor, Window, Windower, make_batch
from circuit_atlas.io.corpus import Corpus, CorpusError

KILL_ENV = "CIRCUIT_ATLAS_TEST_KILL_AT_COMMIT"
KILL_RANK_ENV = "CIRCUIT_ATLAS_TEST_KILL_RANK"
MAX_PENDING_ROWS = 500_000  # commit early rather than buffer more example rows (~200 MB)
COMMIT_SHARE = 10  # wait at least this many times the last commit's duration between commits


@dataclass
class RoundStart:
    """Where a shard's rounds begin (`blocks.Rounds`): the first round all ranks take part in,
    the corpus tokens before it, and this rank's block counts of rounds it already finished."""

    round: int
    tokens_before: int
    known: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RunOptions:
    """How this process runs a build: windows per batch, seconds between commits, progress bar.

    Kept apart from `BuildSettings` because none of them is part of the store's identity (a rerun
    may change them; see the module docstring for the batch size's last-bit effect), and grouped
    because they travel together from `build_feature_store` through both build paths (one
    process, or a rank's shard) down to the builder."""

    batch_size: int
    commit_interval: float
    progress: bool


@dataclass(frozen=True)
class ShardRole:
    """What this builder does as one rank of a distributed build; the default is a single process
    building the whole store. Grouped because the four only make sense together (`shards.py` sets
    them all, a single process none).

    `logit_layers`: the layers whose logit effects this builder computes (None: all).
    `start`: where the rounds begin (a shard's driver agrees on it with the other ranks; None
    computes it from this store's own cursor, as a single process does).
    `on_commit(conn, counts)`: extra meta written inside every corpus commit (a shard's round counts).
    """

    ranks: SoloRanks | TorchRanks = field(default_factory=SoloRanks)
    logit_layers: tuple[int, ...] | None = None
    start: RoundStart | None = None
    on_commit: Callable[[sqlite3.Connection, dict[int, int]], None] | None = None


class StoreBuilder:
    """Builds (or continues) one store: the whole store, or rank `role.ranks.rank`'s shard of it."""

    def __init__(self, model, corpus: Corpus, settings: BuildSettings, conn: sqlite3.Connection,
                 options: RunOptions, role: ShardRole | None = None) -> None:
        role = role or ShardRole()
        self.model, self.corpus, self.settings, self.conn = model, corpus, settings, conn
        self.lm, self.tc = model.lm, model.transcoders
        self.batch_size, self.commit_interval = options.batch_size, options.commit_interval
        self.show_progress = options.progress
        self.ranks = role.ranks
        self.logit_layers = list(range(self.tc.n_layers) if role.logit_layers is None else role.logit_layers)
        self.start, self.on_commit = role.start, role.on_commit
        self.n_zeroed = model.n_zeroed_positions
        self.meta = storage.read_meta(conn)
        progress_meta = self.meta["progress"]
        self.cursor = Cursor(progress_meta["doc"], progress_meta["window"])
        self.tokens, self.windows = progress_meta["tokens"], progress_meta["windows"]
        self.commits = 0
        self.last_commit_seconds = 0.0
        kill_rank = os.environ.get(KILL_RANK_ENV, "")
        wanted = not kill_rank or int(kill_rank) == self.ranks.rank
        self.kill_at = int(os.environ.get(KILL_ENV, "0") or 0) if wanted else 0
        self.rounds: Rounds | None = None

    def run(self, resumed: bool) -> tuple[str, int]:
        """(stop reason, tokens processed by this call)."""
        tokens_before = self.tokens
        reason = self.meta.get("stop_reason")
        if not self.meta.get("complete"):
            self._logits()
            reason = self._corpus_pass(resumed)
        return reason, self.tokens - tokens_before

    def documents(self) -> int:
        """Documents reached so far (the cursor's document counts once it has begun)."""
        return self.cursor.doc + (1 if self.cursor.window > 0 else 0)

    # -- logit effects, one committed layer at a time
    def _logits(self) -> None:
        done = set(self.meta.get("logits_layers", []))
        unembedding = self.lm.unembedding.detach()
        for layer in self.logit_layers:
            if layer in done:
                continue
            top_ids, top_values, bottom_ids, bottom_values = logit_effects(
                self.tc, unembedding, layer, self.settings.n_logits)
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                storage.write_logits(self.conn, layer, np.arange(self.tc.n_features), top_ids,
                                     top_values, bottom_ids, bottom_values)
                done.add(layer)
                storage.set_meta(self.conn, "logits_layers", sorted(done))
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise

    # -- the corpus
    def _accumulators(self, resumed: bool) -> list[LayerAccumulator]:
        edges = np.asarray(self.meta["edges"], dtype=np.float32)
        s = self.settings
        accs = [LayerAccumulator(layer, self.tc.n_features, top_k=s.top_k, n_samples=s.n_samples,
                                 seed=s.seed, edges=edges, before=s.context_before,
                                 after=s.context_after, device=self.lm.device,
                                 track_negative=_may_be_negative(self.tc, layer))
                for layer in range(self.tc.n_layers)]
        if resumed:
            for acc in accs:
                stats, tops, samples = storage.read_layer_state(self.conn, acc.layer, acc.n_bins)
                feature, value, oid, focus, tokens = tops
                acc.load(stats, (feature, value, oid, acc.stored_contexts(focus, tokens)), samples)
        return accs

    def _rounds(self, windower: Windower) -> Rounds:
        """This builder's blocks: from its own cursor (single process) or from `start` (shard)."""
        D, ranks = self.settings.block_documents, self.ranks
        start = self.start
        if start is None:
            first = block_of(self.cursor.doc, D)
            done = block_tokens_before(self.corpus, windower, self.cursor, D)
            start = RoundStart(first, self.tokens - done)
        first_read = start.round
        while first_read in start.known:
            first_read += 1
        reader = BlockReader(self.corpus, windower, D, rank=ranks.rank, world_size=ranks.world_size,
                             first_round=first_read)
        return Rounds(reader, ranks, self.settings.max_tokens, start_round=start.round,
                      tokens_before=start.tokens_before, known=start.known)

    def _corpus_pass(self, resumed: bool) -> str:
        self.accs = self._accumulators(resumed)
        self.pending = PendingExamples()
        windower = Windower(self.lm.tokenizer, self.settings.context_len, self.n_zeroed)
        self.rounds = self._rounds(windower)
        bar = _ProgressBar(self.corpus, self.settings.max_tokens, self._shown_tokens(0),
                           self.documents(), self.show_progress and self.ranks.rank == 0)
        last_commit = time.monotonic()
        reason = None
        try:
            with bar, _StopOnInterrupt() as stop:
                for planned in self.rounds:
                    block_start = self.tokens
                    for batch in self._batches(planned):
                        self._process(batch)
                        bar.update(self._shown_tokens(self.tokens - block_start), self.documents())
                        if stop.requested:
                            reason = "interrupted"
                            break
                        if self._commit_due(last_commit):
                            self._commit()
                            last_commit = time.monotonic()
                    if reason is not None:
                        break
                reason = reason or self.rounds.end_reason
                self._commit(reason=None if reason == "interrupted" else reason)
        except CorpusError as exc:
            hint = " (or pass --encoding-errors replace)" if "not UTF-8" in str(exc) else ""
            raise FeatureBuildError(
                f"{exc}\nThe feature store keeps everything committed before this document; "
                f"fix the corpus{hint} and rerun the same command to continue."
            ) from None
        return reason

    def _shown_tokens(self, in_block: int) -> int:
        """Tokens for the progress bar: exact for one process; for a shard, an estimate of the
        whole build's: the corpus tokens of the rounds before this rank's current one, plus its
        progress in the round times the number of ranks."""
        rounds = self.rounds
        if self.ranks.world_size == 1 or rounds is None:
            return self.tokens
        return min(rounds.round_start_tokens + self.ranks.world_size * in_block, rounds.tokens_before)

    def _batches(self, planned: PlannedBlock) -> Iterator[Batch]:
        """Batches of a block's remaining windows (the last one may be short)."""
        pending: list[Window] = []
        pad = getattr(self.lm.tokenizer, "pad_token_id", None) or 0
        for window in windows_to_process(planned, self.cursor, self.settings.max_tokens, self.n_zeroed):
            pending.append(window)
            if len(pending) == self.batch_size:
                yield make_batch(pending, self.n_zeroed, pad)
                pending = []
        if pending:
            yield make_batch(pending, self.n_zeroed, pad)

    @torch.no_grad()
    def _process(self, batch: Batch) -> None:
        device = self.lm.device
        tokens = batch.tokens.to(device)
        valid = batch.valid.to(device)
        oids = batch.oids.to(device)
        record = self.lm.forward(tokens, input_hook=self.tc.input_hook, output_hook=self.tc.output_hook,
                                 record_internals=False, compute_logits=False)
        B, P = tokens.shape
        for acc, x in zip(self.accs, record.inputs):
            acts = self.tc.encode(acc.layer, x.reshape(B * P, -1)).reshape(B, P, -1).float()
            acts = acts * valid[..., None]
            if not torch.isfinite(acts.sum()):  # one reduction; NaN / inf anywhere propagate
                first = batch.windows[int((~torch.isfinite(acts)).any(-1).any(-1).nonzero()[0])]
                raise FeatureBuildError(
                    f"non-finite feature activations at layer {acc.layer} in document {first.doc} "
                    f"(window {first.index}); check the model / transcoder weights and --dtype")
            added, removed = acc.update(acts, tokens, oids, batch.lengths)
            for rows in removed:
                self.pending.remove(acc.layer, rows)
            for rows in added:
                self.pending.add(acc.layer, rows)
        last = batch.windows[-1]
        self.cursor = Cursor(last.doc, last.index + 1)
        self.tokens += batch.n_tokens
        self.windows += len(batch.windows)

    def _commit_due(self, last_commit: float) -> bool:
        """After `commit_interval` seconds, but never sooner than 10x the last commit took (a
        commit rewrites the pages its rows touch, which grows with the store), so commits cost at
        most ~10% of the time; `commit_interval` 0 commits after every batch. A large buffer of
        pending rows forces a commit to bound memory."""
        if len(self.pending) > MAX_PENDING_ROWS:
            return True
        if self.commit_interval <= 0:
            return True
        wait = max(self.commit_interval, COMMIT_SHARE * self.last_commit_seconds)
        return time.monotonic() - last_commit >= wait

    def _commit(self, reason: str | None = None) -> None:
        """One transaction: net example rows, changed counts, cursor (and `complete` with a
        `reason`). On any error the transaction rolls back and the in-memory state is dropped."""
        started = time.monotonic()
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.pending.flush(self.conn)
            for acc in self.accs:
                storage.write_stats(self.conn, acc.layer, acc.take_dirty())
            storage.set_meta(self.conn, "progress", progress_dict(self.cursor, self.tokens, self.windows))
            if self.on_commit is not None:
                self.on_commit(self.conn, self.rounds.counts)
            if reason is not None:
                storage.set_meta(self.conn, "complete", True)
                storage.set_meta(self.conn, "stop_reason", reason)
            self.commits += 1
            if self.kill_at and self.commits == self.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # test hook: die with the transaction open
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.last_commit_seconds = time.monotonic() - started


def _may_be_negative(tc, layer: int) -> bool:
    """ReLU never gives negative activations, nor JumpReLU with non-negative thresholds; TopK
    (no ReLU in the reference) and negative thresholds can."""
    if tc.activation_name == "relu":
        return False
    threshold = tc.threshold(layer)
    return tc.activation_name != "jumprelu" or threshold is None or bool((threshold < 0).any())


# ---------------------------------------------------------------------- progress, Ctrl-C
class _ProgressBar:
    """tqdm bar in tokens (with --max-tokens) or in documents (counted up front), with tok/s."""

    def __init__(self, corpus: Corpus, budget: int | None, tokens: int, docs: int, enabled: bool) -> None:
        self.enabled, self.budget = enabled, budget
        self.bar = None
        self.start_tokens, self.start_time = tokens, time.perf_counter()
        if not enabled:
            return
        from tqdm.auto import tqdm

        if budget is not None:
            self.bar = tqdm(total=budget, initial=tokens, unit="tok", unit_scale=True,
                            desc="features", dynamic_ncols=True)
        else:
            total = _count_documents(corpus)
            self.bar = tqdm(total=total, initial=docs, unit="doc", desc="features", dynamic_ncols=True)

    def update(self, tokens: int, docs: int) -> None:
        if self.bar is None:
            return
        self.bar.n = tokens if self.budget is not None else docs
        rate = (tokens - self.start_tokens) / max(time.perf_counter() - self.start_time, 1e-9)
        self.bar.set_postfix_str(f"{tokens:,} tok, {rate:,.0f} tok/s", refresh=False)
        self.bar.refresh()

    def __enter__(self) -> "_ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def _count_documents(corpus: Corpus) -> int | None:
    """Documents in a local corpus (None for streamed hub datasets: no total, no ETA)."""
    if isinstance(corpus, HubDatasetCorpus):
        return None
    return sum(1 for _ in corpus.documents(0))


class _StopOnInterrupt:
    """First SIGINT: set `requested` (the loop commits and stops); second: KeyboardInterrupt."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "_StopOnInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
