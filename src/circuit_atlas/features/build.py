"""`build_feature_store`: stream a corpus through model + transcoders into a feature store.

Flow: check settings and corpus before touching the store; create it (or reopen it and check
that it was built with the same model, transcoders, corpus and settings); compute the logit
effects layer by layer (one commit per layer); then run the corpus in batches of windows
(`windows.py`), feed each layer's activations to its `LayerAccumulator`, and commit every
`commit_interval` seconds (sooner when many example rows are waiting).

Resumability: between commits, all changes live in memory (the accumulators and the buffered
example rows of `pending.py`). A commit is one short transaction holding the net example-row
changes, the counts of the features changed since the last commit, and the corpus cursor (next
document and window, tokens done). So the database always holds the exact state after some whole
batch, and a rerun reloads it and continues with the next window; a crash loses at most the work
since the last commit. Since every statistic is merge-order independent (`accumulator.py`), the
finished store does not depend on where (or how often) the run stopped. It does not depend on the
batch size either, except through floating-point rounding: padded batches of another shape can
change activations in the last bits, so a bit-identical resume needs the same --batch-size (and
device).

Only the input hook of each layer is needed, so the forward pass skips the logits and keeps no
attention patterns. Positions where attribution has no feature nodes (position 0, the BOS) are
excluded from every statistic.

A first Ctrl-C stops after the current batch and commits; a second one aborts (the last commit
stays). The environment variable `CIRCUIT_ATLAS_TEST_KILL_AT_COMMIT=N` makes the process kill
itself (SIGKILL) inside its N-th corpus commit, after writing and before COMMIT; tests use it to
prove that a kill at the worst moment loses nothing already committed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from circuit_atlas.features import storage
from circuit_atlas.features.accumulator import LayerAccumulator
from circuit_atlas.features.errors import FeatureBuildError, FeatureStoreError
from circuit_atlas.features.histogram import default_edges
from circuit_atlas.features.keys import MAX_CONTEXT_LEN
from circuit_atlas.features.logits import logit_effects
from circuit_atlas.features.pending import PendingExamples
from circuit_atlas.features.sources import HubDatasetCorpus, open_feature_corpus
from circuit_atlas.features.windows import Batch, Cursor, Window, Windower, counted_tokens, make_batch, truncate
from circuit_atlas.models.token_text import token_display_strings
from circuit_atlas.io.corpus import Corpus, CorpusError

KILL_ENV = "CIRCUIT_ATLAS_TEST_KILL_AT_COMMIT"
DEFAULT_CONTEXT_LEN = 128
BUILD_CACHE_MIB = 256
MAX_PENDING_ROWS = 500_000  # commit early rather than buffer more example rows (~200 MB)
COMMIT_SHARE = 10  # wait at least this many times the last commit's duration between commits


@dataclass(frozen=True)
class BuildSettings:
    """Everything that changes what a store holds (a resumed build must use the same values).

    `context_len` None means min(128, the model's maximum positions). `context_before/after`:
    tokens kept around each example's focal token. `n_samples`: size of the uniform sample of
    active occurrences the quantile groups are drawn from. `max_tokens`: budget of counted tokens
    (positions with statistics); None reads the whole corpus.
    """

    context_len: int | None = None
    top_k: int = 20
    n_samples: int = 40
    context_before: int = 15
    context_after: int = 5
    n_logits: int = 10
    max_tokens: int | None = None
    seed: int = 0


@dataclass
class BuildReport:
    """What a call did: totals of the store after the call and this call's own throughput."""

    out: Path
    tokens: int
    documents: int
    windows: int
    complete: bool
    stop_reason: str
    resumed: bool
    new_tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def build_feature_store(
    model,
    corpus: Corpus | str | Path | Sequence[str],
    out: str | Path,
    settings: BuildSettings = BuildSettings(),
    *,
    batch_size: int = 16,
    commit_interval: float = 60.0,
    progress: bool = True,
) -> BuildReport:
    """Build (or resume) the feature store in folder `out` for `model` (a `ReplacementModel`).

    `corpus`: a `Corpus`, or anything `sources.open_feature_corpus` accepts.
    """
    started = time.perf_counter()
    context_len = _check_settings(model, settings, batch_size)
    settings = BuildSettings(**{**asdict(settings), "context_len": context_len})
    if not isinstance(corpus, Corpus):
        corpus = open_feature_corpus(corpus)
    _check_not_empty(corpus)
    identity = _identity(model, corpus, settings)
    out = Path(out).expanduser()
    with _exclusive_build(out):
        conn, resumed = _open_store(out, model, identity)
        try:
            builder = _Builder(model, corpus, settings, conn, batch_size, commit_interval, progress)
            report = builder.run(out, resumed)
        finally:
            conn.close()
    report.seconds = time.perf_counter() - started
    return report


# ---------------------------------------------------------------------- checks and identity
def _check_settings(model, settings: BuildSettings, batch_size: int) -> int:
    for name in ("top_k", "n_samples", "n_logits"):
        if getattr(settings, name) < 1:
            raise FeatureBuildError(f"{name} must be at least 1, got {getattr(settings, name)}")
    for name in ("context_before", "context_after", "seed"):
        if getattr(settings, name) < 0:
            raise FeatureBuildError(f"{name} must not be negative, got {getattr(settings, name)}")
    if batch_size < 1:
        raise FeatureBuildError(f"--batch-size must be at least 1, got {batch_size}")
    if settings.max_tokens is not None and settings.max_tokens < 1:
        raise FeatureBuildError(f"--max-tokens must be at least 1, got {settings.max_tokens}")
    limit = min(model.lm.max_positions or MAX_CONTEXT_LEN, MAX_CONTEXT_LEN)
    context_len = settings.context_len or min(DEFAULT_CONTEXT_LEN, limit)
    if not 2 <= context_len <= limit:
        raise FeatureBuildError(
            f"--context-len must lie in 2..{limit} (model {model.lm.name!r} accepts "
            f"{model.lm.max_positions} positions), got {context_len}"
        )
    return context_len


def _check_not_empty(corpus: Corpus) -> None:
    first = next(iter(corpus.documents(0)), None)
    if first is None:
        raise CorpusError(f"corpus {corpus.description} has no documents (every document is "
                          "empty or whitespace)")


def _fingerprint(model) -> str:
    """A hash of a few weights of the model and of the transcoders, read as float32 on the CPU,
    so a store is never resumed with other weights that happen to have the same shapes."""
    tc, lm = model.transcoders, model.lm
    few = torch.arange(min(4, tc.n_features))
    pieces = [
        lm.module(lm.adapter.embed_tokens).weight[:4],
        lm.unembedding[:4],
        tc.encoder_rows(0, few),
        tc.decoder_rows_all(tc.n_layers - 1, few),
    ]
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(piece.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _identity(model, corpus: Corpus, settings: BuildSettings) -> dict[str, Any]:
    lm, tc = model.lm, model.transcoders
    return {
        "model": {
            "family": lm.family, "n_layers": lm.n_layers, "d_model": lm.d_model,
            "vocab_size": lm.vocab_size, "dtype": str(lm.dtype).removeprefix("torch."),
            "n_zeroed_positions": model.n_zeroed_positions,
        },
        "transcoders": {
            "kind": tc.kind, "n_layers": tc.n_layers, "d_model": tc.d_model,
            "n_features": tc.n_features, "activation": tc.activation_name,
            "input_hook": tc.input_hook, "output_hook": tc.output_hook,
        },
        "weights": _fingerprint(model),
        "corpus": {"description": corpus.description},
        "settings": asdict(settings),
    }


# ---------------------------------------------------------------------- store creation
@contextlib.contextmanager
def _exclusive_build(out: Path) -> Iterator[None]:
    """One builder per store: a second one fails at once instead of waiting on SQLite locks."""
    if out.exists() and not out.is_dir():
        raise FeatureStoreError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: SQLite's own locking still applies
        yield
        return
    fd = os.open(out / ".build.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise FeatureStoreError(f"another `features build` is writing to {out}") from None
        yield
    finally:
        os.close(fd)


def _open_store(out: Path, model, identity: dict[str, Any]) -> tuple[sqlite3.Connection, bool]:
    """(connection, resumed): a fresh store is initialised; an existing one must match."""
    file = storage.store_file(out)
    conn = storage.connect(file, create=True, cache_mib=BUILD_CACHE_MIB)
    try:
        if not storage.table_names(conn):
            meta = {**identity, "model_name": model.lm.name, "transcoders_scan": model.transcoders.scan,
                    "edges": default_edges().tolist(), "progress": _progress_dict(Cursor(), 0, 0),
                    "logits_layers": [], "complete": False, "stop_reason": None}
            storage.initialize(conn, meta, _vocabulary(model.lm))
            return conn, False
        meta = storage.check_format(conn, file)
        _check_same_build(meta, identity, out)
        _check_budget(conn, meta, identity["settings"]["max_tokens"], out)
        return conn, True
    except BaseException:
        conn.close()
        raise


def _check_same_build(meta: dict[str, Any], identity: dict[str, Any], out: Path) -> None:
    """Every input and setting must match, except the budget (`_check_budget`)."""
    differences = []
    for section, wanted in identity.items():
        stored = meta.get(section)
        if isinstance(wanted, dict) and isinstance(stored, dict):
            for key in sorted(set(wanted) | set(stored)):
                if (section, key) == ("settings", "max_tokens"):
                    continue
                if stored.get(key) != wanted.get(key):
                    differences.append(f"{section}.{key}: stored {stored.get(key)!r}, now {wanted.get(key)!r}")
        elif stored != wanted:
            differences.append(f"{section}: stored {stored!r}, now {wanted!r}")
    if differences:
        raise FeatureStoreError(
            f"the feature store in {out} was built with other inputs or settings, so this run "
            "cannot continue it (use the same command to resume, or a new --out):\n  "
            + "\n  ".join(differences)
        )


def _check_budget(conn: sqlite3.Connection, meta: dict[str, Any], budget: int | None, out: Path) -> None:
    """An unfinished build may continue under another --max-tokens (the result equals a fresh
    build with the new budget) as long as it has not processed more than that; a finished one
    cannot be changed."""
    stored = meta["settings"].get("max_tokens")
    if budget == stored:
        return
    done = meta["progress"]["tokens"]
    if meta.get("complete"):
        raise FeatureStoreError(
            f"the feature store in {out} is complete ({done:,} tokens, --max-tokens {stored}); "
            "build into a new --out to use another budget"
        )
    if budget is not None and budget < done:
        raise FeatureStoreError(
            f"the feature store in {out} already holds {done:,} tokens, more than --max-tokens {budget}"
        )
    conn.execute("BEGIN IMMEDIATE")
    storage.set_meta(conn, "settings", {**meta["settings"], "max_tokens": budget})
    conn.execute("COMMIT")


def _vocabulary(lm) -> list[str]:
    """Token strings for every id of the model, as they read inside running text (so dashboards
    that join them keep word spaces); ids the tokenizer cannot decode become `<id N>`."""
    ids = list(range(lm.vocab_size))
    if lm.tokenizer is None:
        return [f"<id {i}>" for i in ids]
    return token_display_strings(lm.tokenizer, ids)


def _progress_dict(cursor: Cursor, tokens: int, windows: int) -> dict[str, int]:
    return {"doc": cursor.doc, "window": cursor.window, "tokens": tokens, "windows": windows}


# ---------------------------------------------------------------------- the build loop
class _Builder:
    def __init__(self, model, corpus: Corpus, settings: BuildSettings, conn: sqlite3.Connection,
                 batch_size: int, commit_interval: float, progress: bool) -> None:
        self.model, self.corpus, self.settings, self.conn = model, corpus, settings, conn
        self.lm, self.tc = model.lm, model.transcoders
        self.batch_size, self.commit_interval, self.show_progress = batch_size, commit_interval, progress
        self.n_zeroed = model.n_zeroed_positions
        self.meta = storage.read_meta(conn)
        progress_meta = self.meta["progress"]
        self.cursor = Cursor(progress_meta["doc"], progress_meta["window"])
        self.tokens, self.windows = progress_meta["tokens"], progress_meta["windows"]
        self.commits = 0
        self.last_commit_seconds = 0.0
        self.kill_at = int(os.environ.get(KILL_ENV, "0") or 0)

    def run(self, out: Path, resumed: bool) -> BuildReport:
        tokens_before = self.tokens
        reason = self.meta.get("stop_reason")
        if not self.meta.get("complete"):
            self._logits()
            reason = self._corpus_pass(resumed)
        return BuildReport(out=out, tokens=self.tokens, documents=self._documents(), windows=self.windows,
                           complete=reason != "interrupted", stop_reason=reason, resumed=resumed,
                           new_tokens=self.tokens - tokens_before, seconds=0.0)

    def _documents(self) -> int:
        """Documents reached so far (the cursor's document counts once it has begun)."""
        return self.cursor.doc + (1 if self.cursor.window > 0 else 0)

    # -- logit effects, one committed layer at a time
    def _logits(self) -> None:
        done = set(self.meta.get("logits_layers", []))
        unembedding = self.lm.unembedding.detach()
        for layer in range(self.tc.n_layers):
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
                acc.load(*storage.read_layer_state(self.conn, acc.layer, acc.n_bins))
        return accs

    def _corpus_pass(self, resumed: bool) -> str:
        self.accs = self._accumulators(resumed)
        self.pending = PendingExamples()
        windower = Windower(self.lm.tokenizer, self.settings.context_len, self.n_zeroed)
        budget = self.settings.max_tokens
        stream = windower.windows(self.corpus.documents(self.cursor.doc), self.cursor)
        bar = _ProgressBar(self.corpus, budget, self.tokens, self._documents(), self.show_progress)
        last_commit = time.monotonic()
        reason = "corpus"
        try:
            with bar, _StopOnInterrupt() as stop:
                for batch in self._batches(stream, budget):
                    self._process(batch)
                    bar.update(self.tokens, self._documents())
                    if budget is not None and self.tokens >= budget:
                        reason = "max-tokens"
                        break
                    if stop.requested:
                        reason = "interrupted"
                        break
                    if self._commit_due(last_commit):
                        self._commit()
                        last_commit = time.monotonic()
                self._commit(reason=None if reason == "interrupted" else reason)
        except CorpusError as exc:
            hint = " (or pass --encoding-errors replace)" if "not UTF-8" in str(exc) else ""
            raise FeatureBuildError(
                f"{exc}\nThe feature store keeps everything committed before this document; "
                f"fix the corpus{hint} and rerun the same command to continue."
            ) from None
        return reason

    def _batches(self, stream: Iterator[Window], budget: int | None) -> Iterator[Batch]:
        pending: list[Window] = []
        planned = self.tokens
        pad = getattr(self.lm.tokenizer, "pad_token_id", None) or 0
        for window in stream:
            counted = counted_tokens(window, self.n_zeroed)
            if budget is not None and planned + counted >= budget:
                pending.append(truncate(window, budget - planned, self.n_zeroed))
                break
            planned += counted
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
            storage.set_meta(self.conn, "progress", _progress_dict(self.cursor, self.tokens, self.windows))
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
    (no ReLU in circuit-tracer's JumpReLU) and negative thresholds can."""
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
