"""A feature store built by several ranks (`torchrun`), equal to a one-process build.

Layout of `--out` during a distributed build::

    features.sqlite               the store (rank 0 creates it; filled by the merge at the end)
    shards/world.json             {"world_size": N, "block_documents": D}: resume with the same
    shards/rank-00000/...         one shard per rank: a store of that rank's blocks of the corpus

Each rank builds its shard with the ordinary build loop (`builder.py`) over its blocks
(`blocks.py`: rank r takes blocks r, r + N, ...; batches never cross blocks, so every window is
computed in the same batch as in a one-process build), plus its share of the logit-effect layers.
When every rank has finished, rank 0 merges the shards into `features.sqlite` (`merge.py`) and
removes them. The result equals, row for row, the store one process builds from the same corpus
and settings on the same kind of device.

Resuming: every rank commits its shard on its own schedule, so after a rank is killed the ranks
hold different amounts of work. A rerun (same command, same number of ranks) finds the earliest
round any rank has not finished; ranks that are further along take part in the gathers of the
rounds in between from the block counts they stored (`block_tokens`), without redoing them.
A rank killed during the merge leaves the shards in place, and the rerun merges again.

`--out` must be on a file system every rank sees (across nodes: a shared one); this is checked
before any work starts.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.features import merge, storage
from circuit_atlas.features.blocks import block_of
from circuit_atlas.features.builder import RoundStart, RunOptions, ShardRole, StoreBuilder
from circuit_atlas.features.errors import FeatureStoreError
from circuit_atlas.features.histogram import default_edges, n_bins
from circuit_atlas.features.open_store import (
    BUILD_CACHE_MIB,
    check_same_build,
    exclusive_build,
    initial_meta,
    progress_dict,
    vocabulary,
)
from circuit_atlas.features.settings import BuildReport, BuildSettings
from circuit_atlas.features.windows import Cursor
from circuit_atlas.io.corpus import Corpus

SHARDS_DIR = "shards"
WORLD_FILE = "world.json"


def shard_folder(out: Path, rank: int) -> Path:
    return out / SHARDS_DIR / f"rank-{rank:05d}"


def read_world(out: Path) -> dict[str, Any] | None:
    """The record of a distributed build in progress in `out`, or None."""
    path = out / SHARDS_DIR / WORLD_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise FeatureStoreError(f"{path} is unreadable ({exc}); remove {out / SHARDS_DIR} to start "
                                "the distributed build again") from None


def check_no_sharded_build(out: Path) -> None:
    """A single process must not continue a build that several ranks started."""
    world = read_world(out)
    if world is not None:
        raise FeatureStoreError(
            f"{out} holds a feature store being built by {world.get('world_size')} ranks "
            f"(torchrun); continue it with torchrun and {world.get('world_size')} processes in "
            "all, or build into a new --out")


# ---------------------------------------------------------------------- the driver
def build_sharded(model, corpus: Corpus, out: Path, settings: BuildSettings, wanted: dict, ranks,
                  options: RunOptions) -> BuildReport:
    """This rank's part of a distributed build (every rank calls it); see the module docstring."""
    with ExitStack() as stack:
        done = _agree(ranks, lambda: _prepare_store(stack, model, out, settings, wanted, ranks))
        if done:
            if ranks.rank == 0:
                shutil.rmtree(out / SHARDS_DIR, ignore_errors=True)
            return _read_report(out, resumed=True, new_tokens=0)
        conn = _agree(ranks, lambda: _open_shard(stack, model, out, settings, wanted, ranks))
        stack.callback(conn.close)  # closing twice is harmless
        meta = storage.read_meta(conn)
        start, resumed = _round_start(conn, meta, settings, ranks)
        counts_before = meta.get("block_tokens", [])[:start.round]

        def save_counts(connection: sqlite3.Connection, counts: dict[int, int]) -> None:
            later = [counts[k] for k in range(start.round, max(counts, default=start.round - 1) + 1)]
            storage.set_meta(connection, "block_tokens", counts_before + later)

        layers = tuple(range(ranks.rank, model.transcoders.n_layers, ranks.world_size))
        role = ShardRole(ranks=ranks, logit_layers=layers, start=start, on_commit=save_counts)
        builder = StoreBuilder(model, corpus, settings, conn, options, role)
        reason, new_tokens = builder.run(resumed)
        if reason == "interrupted":
            return BuildReport(out=out, tokens=builder.tokens, documents=builder.documents(),
                               windows=builder.windows, complete=False, stop_reason=reason,
                               resumed=resumed, new_tokens=new_tokens, seconds=0.0)
        conn.close()
        new_tokens = ranks.reduce_int(new_tokens, "sum")  # also: every shard is finished
        resumed = bool(ranks.reduce_int(int(resumed), "max"))
        if ranks.rank == 0:
            _merge(out, settings, model.transcoders, ranks.world_size, reason)
        ranks.barrier()
    return _read_report(out, resumed=resumed, new_tokens=new_tokens)


def _agree(ranks, step):
    """Run `step` on every rank; if it fails on any, every rank raises (naming the ranks), so no
    rank is left waiting for the others. Returns this rank's result."""
    try:
        result, error = step(), None
    except CircuitAtlasError as exc:
        result, error = None, str(exc)
    errors = [(rank, e) for rank, e in enumerate(ranks.gather_objects(error)) if e is not None]
    if errors:
        same = len({e for _, e in errors}) == 1
        text = errors[0][1] if same else "\n".join(f"rank {r}: {e}" for r, e in errors)
        raise FeatureStoreError(text)
    return result


def _prepare_store(stack: ExitStack, model, out: Path, settings: BuildSettings, wanted: dict,
                   ranks) -> bool:
    """Rank 0 creates or checks the store and the shard layout; every rank then checks that it
    sees them. True when the store is already complete."""
    state = None
    if ranks.rank == 0:
        try:
            stack.enter_context(exclusive_build(out))
            state = ("done", None) if _prepare_final(out, model, settings, wanted, ranks.world_size) \
                else ("build", _visibility_token(out))
        except FeatureStoreError as exc:
            state = ("error", str(exc))
    state = ranks.broadcast(state)
    if state[0] == "error":
        raise FeatureStoreError(state[1])
    if state[0] == "done":
        return True
    probe = out / SHARDS_DIR / f".visible-{state[1]}"
    if not probe.is_file():
        raise FeatureStoreError(
            f"rank {ranks.rank} does not see {probe}, which rank 0 wrote: --out must be on a "
            "file system that every rank (every node) shares")
    return False


def _prepare_final(out: Path, model, settings: BuildSettings, wanted: dict, world_size: int) -> bool:
    """Create `features.sqlite` and `shards/world.json`, or check them; True when complete."""
    file = storage.store_file(out)
    conn = storage.connect(file, create=True, cache_mib=BUILD_CACHE_MIB)
    try:
        if not storage.table_names(conn):
            storage.initialize(conn, initial_meta(model, wanted), vocabulary(model.lm))
            meta = storage.read_meta(conn)
        else:
            meta = storage.check_format(conn, file)
            if check_same_build(meta, wanted, out):
                storage.set_meta(conn, "corpus", wanted["corpus"])
            _check_same_budget(meta, wanted, out)
    finally:
        conn.close()
    if meta.get("complete"):
        return True
    world = {"world_size": world_size, "block_documents": settings.block_documents}
    stored = read_world(out)
    if stored is None:
        if meta["progress"]["windows"] > 0:
            raise FeatureStoreError(
                f"the feature store in {out} was started by a single process; continue it "
                "with one process (the same command without torchrun), or build into a new --out")
        (out / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
        (out / SHARDS_DIR / WORLD_FILE).write_text(json.dumps(world), encoding="utf-8")
    elif stored != world:
        raise FeatureStoreError(
            f"the feature store in {out} is being built by {stored.get('world_size')} ranks; "
            f"continue it with {stored.get('world_size')} processes in all (this run has "
            f"{world_size}), or build into a new --out")
    return False


def _visibility_token(out: Path) -> str:
    token = uuid.uuid4().hex
    for old in (out / SHARDS_DIR).glob(".visible-*"):
        old.unlink(missing_ok=True)
    (out / SHARDS_DIR / f".visible-{token}").write_text("", encoding="utf-8")
    return token


def _check_same_budget(meta: dict, wanted: dict, out: Path) -> None:
    stored, now = meta["settings"].get("max_tokens"), wanted["settings"]["max_tokens"]
    if stored != now:
        raise FeatureStoreError(
            f"the feature store in {out} was started with --max-tokens {stored}; a distributed "
            f"build continues only with the same budget (this run: {now})")


def _open_shard(stack: ExitStack, model, out: Path, settings: BuildSettings, wanted: dict,
                ranks) -> sqlite3.Connection:
    folder = shard_folder(out, ranks.rank)
    stack.enter_context(exclusive_build(folder))
    shard_identity = {**wanted, "shard": {"rank": ranks.rank, "world_size": ranks.world_size}}
    file = storage.store_file(folder)
    conn = storage.connect(file, create=True, cache_mib=BUILD_CACHE_MIB)
    try:
        if not storage.table_names(conn):
            meta = {**initial_meta(model, shard_identity), "block_tokens": []}
            storage.initialize(conn, meta, vocabulary(model.lm))
        else:
            meta = storage.check_format(conn, file)
            if check_same_build(meta, shard_identity, folder):
                storage.set_meta(conn, "corpus", wanted["corpus"])
            _check_same_budget(meta, wanted, folder)
    except BaseException:
        conn.close()
        raise
    return conn


def _round_start(conn: sqlite3.Connection, meta: dict, settings: BuildSettings,
                 ranks) -> tuple[RoundStart, bool]:
    """The round every rank starts from, and whether anything was done before."""
    progress = meta["progress"]
    counts = meta.get("block_tokens", [])
    mine = _agree(ranks, lambda: _own_round(meta, settings, ranks))  # checked before collectives
    first = ranks.reduce_int(mine, "min")
    tokens_before = ranks.reduce_int(sum(counts[:first]), "sum")
    all_complete = ranks.reduce_int(int(bool(meta.get("complete"))), "min")
    if meta.get("complete") and not all_complete:
        # another rank still has rounds to do; this one takes part in them (doing nothing new)
        conn.execute("BEGIN IMMEDIATE")
        storage.set_meta(conn, "complete", False)
        conn.execute("COMMIT")
    resumed = progress["windows"] > 0 or bool(meta.get("logits_layers"))
    return RoundStart(first, tokens_before, {k: counts[k] for k in range(first, mine)}), resumed


def _own_round(meta: dict, settings: BuildSettings, ranks) -> int:
    """The round of this shard's cursor (it has stored the block counts of every earlier one)."""
    mine = block_of(meta["progress"]["doc"], settings.block_documents) // ranks.world_size
    stored = len(meta.get("block_tokens", []))
    if stored < mine:
        raise FeatureStoreError(f"shard {ranks.rank} lists {stored} block counts but is at round "
                                f"{mine}; remove the shards folder to start the build again")
    return mine


def _merge(out: Path, settings: BuildSettings, transcoders, world_size: int, reason: str) -> None:
    """Rank 0: the shards into `features.sqlite`, in one transaction; then remove the shards."""
    files = [storage.store_file(shard_folder(out, rank)) for rank in range(world_size)]
    metas = []
    for file in files:
        conn = storage.connect(file, readonly=True)
        try:
            metas.append(storage.read_meta(conn))
        finally:
            conn.close()
    conn = storage.connect(storage.store_file(out), cache_mib=BUILD_CACHE_MIB)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            merge.merge_into(conn, files, n_layers=transcoders.n_layers,
                             n_features=transcoders.n_features, n_bins=n_bins(default_edges()),
                             top_k=settings.top_k, n_samples=settings.n_samples,
                             before=settings.context_before, after=settings.context_after)
            storage.set_meta(conn, "progress", _merged_progress(metas))
            storage.set_meta(conn, "logits_layers", list(range(transcoders.n_layers)))
            storage.set_meta(conn, "complete", True)
            storage.set_meta(conn, "stop_reason", reason)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()
    shutil.rmtree(out / SHARDS_DIR, ignore_errors=True)


def _merged_progress(metas: list[dict]) -> dict[str, int]:
    """Totals of the shards; the cursor after the last window any of them processed."""
    progress = [m["progress"] for m in metas]
    worked = [(p["doc"], p["window"]) for p in progress if p["windows"] > 0]
    doc, window = max(worked, default=(0, 0))
    return progress_dict(Cursor(doc, window), sum(p["tokens"] for p in progress),
                         sum(p["windows"] for p in progress))


def _read_report(out: Path, *, resumed: bool, new_tokens: int) -> BuildReport:
    """The report of the finished store in `out`, from its meta records."""
    conn = storage.connect(storage.store_file(out), readonly=True)
    try:
        meta = storage.read_meta(conn)
    finally:
        conn.close()
    progress = meta["progress"]
    return BuildReport(out=out, tokens=progress["tokens"],
                       documents=progress["doc"] + (1 if progress["window"] > 0 else 0),
                       windows=progress["windows"], complete=bool(meta.get("complete")),
                       stop_reason=meta.get("stop_reason"), resumed=resumed,
                       new_tokens=new_tokens, seconds=0.0)
