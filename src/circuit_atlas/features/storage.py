"""The on-disk store: one SQLite database, `<out>/features.sqlite`.

Why SQLite (stdlib `sqlite3`) rather than one JSON file per feature or Parquet:

* one file holds millions of features (a million small files strain file systems, and copying
  or serving them is slow); rows are looked up by `(layer, feature)` in B-tree indexes, so a
  feature panel request is a few indexed reads. (The example rows live in a rowid table with a
  unique index rather than a WITHOUT ROWID table: the builder inserts them in scattered key
  order, and appending ~170-byte rows while only the small index entries land at random pages
  is about a quarter faster.);
* writes are transactional: the builder writes example rows as batches change them, then at
  each commit point the changed counts *and the corpus cursor* in the same transaction. A crash
  or kill at any moment leaves the last committed state, which is exactly the state at some
  cursor, so a rerun continues from there and loses nothing already committed. Parquet files
  are immutable: incremental updates of top-k lists would need our own log + compaction;
* readers (the explorer) can open the store while a build is running (WAL journal mode).

Tables: `meta` (JSON values: format, settings, model and transcoder identity, bin edges,
progress), `vocab` (token strings, so readers need no tokenizer), `stats` (counts and a
histogram per active feature), `examples` (top and sampled contexts: token ids and the
feature's activation per token, as little-endian int32 / float32 blobs), `logits` (top and bottom
output tokens of each feature's decoder direction). Labels are kept outside, in `labels.json`.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from circuit_atlas.features.accumulator import StatsRows
from circuit_atlas.features.errors import FeatureStoreError

STORE_FILE = "features.sqlite"
FORMAT_NAME = "circuit-atlas-features"
FORMAT_VERSION = 1

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE vocab (id INTEGER PRIMARY KEY, token TEXT NOT NULL);
CREATE TABLE stats (
    layer INTEGER NOT NULL, feature INTEGER NOT NULL,
    n_active INTEGER NOT NULL, n_negative INTEGER NOT NULL, sum_fixed INTEGER NOT NULL,
    hist_offset INTEGER NOT NULL, histogram BLOB NOT NULL,
    PRIMARY KEY (layer, feature)) WITHOUT ROWID;
CREATE TABLE examples (
    layer INTEGER NOT NULL, feature INTEGER NOT NULL, kind INTEGER NOT NULL, oid INTEGER NOT NULL,
    activation REAL NOT NULL, sample_key INTEGER NOT NULL, focus INTEGER NOT NULL,
    tokens BLOB NOT NULL, acts BLOB NOT NULL,
    UNIQUE (layer, feature, kind, oid));
CREATE TABLE logits (
    layer INTEGER NOT NULL, feature INTEGER NOT NULL,
    top_ids BLOB NOT NULL, top_values BLOB NOT NULL,
    bottom_ids BLOB NOT NULL, bottom_values BLOB NOT NULL,
    PRIMARY KEY (layer, feature)) WITHOUT ROWID;
"""
_TABLES = {"meta", "vocab", "stats", "examples", "logits"}


def store_file(path: str | Path) -> Path:
    """The database file of a store given its folder (or the file itself)."""
    path = Path(path).expanduser()
    return path if path.suffix == ".sqlite" else path / STORE_FILE


def connect(file: Path, *, create: bool = False, readonly: bool = False,
            cache_mib: int = 16) -> sqlite3.Connection:
    """Open the database in autocommit mode (transactions are explicit BEGIN / COMMIT).

    `cache_mib`: SQLite's page cache; the builder asks for more, because its inserts are spread
    over the whole store and thrash a small cache.
    """
    mode = "ro" if readonly else ("rwc" if create else "rw")
    try:
        conn = sqlite3.connect(f"{file.resolve().as_uri()}?mode={mode}", uri=True,
                               isolation_level=None, check_same_thread=False, timeout=60.0)
        if not readonly:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA cache_size=-{cache_mib * 1024}")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise FeatureStoreError(f"feature store {file} cannot be opened: {exc}") from None
    return conn


def table_names(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def check_format(conn: sqlite3.Connection, file: Path) -> dict[str, Any]:
    """The meta dict of a finished initialisation; raises if the file is something else."""
    tables = table_names(conn)
    if not _TABLES <= tables:
        raise FeatureStoreError(f"{file} is not a circuit-atlas feature store (tables: "
                                f"{', '.join(sorted(tables)) or 'none'})")
    meta = read_meta(conn)
    fmt = meta.get("format") or {}
    if fmt.get("name") != FORMAT_NAME:
        raise FeatureStoreError(f"{file} is not a circuit-atlas feature store (no format record)")
    if fmt.get("version") != FORMAT_VERSION:
        raise FeatureStoreError(f"{file} has store format version {fmt.get('version')}; this "
                                f"circuit-atlas reads version {FORMAT_VERSION}")
    return meta


def initialize(conn: sqlite3.Connection, meta: dict[str, Any], vocab: list[str]) -> None:
    """Create the tables, meta and vocabulary in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        # executescript would commit on its own; one statement at a time keeps a single tx
        for statement in filter(str.strip, _SCHEMA.split(";")):
            conn.execute(statement)
        for key, value in {"format": {"name": FORMAT_NAME, "version": FORMAT_VERSION}, **meta}.items():
            set_meta(conn, key, value)
        conn.executemany("INSERT INTO vocab (id, token) VALUES (?, ?)", enumerate(vocab))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def read_meta(conn: sqlite3.Connection) -> dict[str, Any]:
    return {key: json.loads(value) for key, value in conn.execute("SELECT key, value FROM meta")}


def set_meta(conn: sqlite3.Connection, key: str, value: Any) -> None:
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                 (key, json.dumps(value, sort_keys=True)))


# ---------------------------------------------------------------------- writes (inside a tx)
# (example rows are written by `pending.PendingExamples.flush`)
def write_stats(conn: sqlite3.Connection, layer: int, rows: StatsRows) -> None:
    def histogram(counts: np.ndarray) -> tuple[int, bytes]:
        nonzero = np.flatnonzero(counts)
        if not len(nonzero):
            return 0, b""
        return int(nonzero[0]), counts[nonzero[0]:nonzero[-1] + 1].astype("<i8").tobytes()

    conn.executemany(
        "INSERT OR REPLACE INTO stats (layer, feature, n_active, n_negative, sum_fixed, "
        "hist_offset, histogram) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            (layer, int(f), int(a), int(n), int(s), *histogram(h))
            for f, a, n, s, h in zip(rows.features, rows.n_active, rows.n_negative, rows.sum_fixed,
                                     rows.histograms)
        ),
    )


def write_logits(conn: sqlite3.Connection, layer: int, features: np.ndarray, top_ids: np.ndarray,
                 top_values: np.ndarray, bottom_ids: np.ndarray, bottom_values: np.ndarray) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO logits (layer, feature, top_ids, top_values, bottom_ids, "
        "bottom_values) VALUES (?, ?, ?, ?, ?, ?)",
        (
            (layer, int(f), ti.astype("<i4").tobytes(), tv.astype("<f4").tobytes(),
             bi.astype("<i4").tobytes(), bv.astype("<f4").tobytes())
            for f, ti, tv, bi, bv in zip(features, top_ids, top_values, bottom_ids, bottom_values)
        ),
    )


# ---------------------------------------------------------------------- reads
def unpack_histogram(offset: int, blob: bytes, n_bins: int) -> np.ndarray:
    counts = np.zeros(n_bins, dtype=np.int64)
    values = np.frombuffer(blob, dtype="<i8")
    counts[offset:offset + len(values)] = values
    return counts


def read_layer_state(conn: sqlite3.Connection, layer: int, n_bins: int):
    """(StatsRows, top (feature, activation, oid, focus, token blobs), samples (feature, key, oid))
    of one layer."""
    stats = conn.execute(
        "SELECT feature, n_active, n_negative, sum_fixed, hist_offset, histogram FROM stats "
        "WHERE layer = ? ORDER BY feature", (layer,)).fetchall()
    rows = StatsRows(
        features=np.array([r[0] for r in stats], dtype=np.int64),
        n_active=np.array([r[1] for r in stats], dtype=np.int64),
        n_negative=np.array([r[2] for r in stats], dtype=np.int64),
        sum_fixed=np.array([r[3] for r in stats], dtype=np.int64),
        histograms=np.stack([unpack_histogram(r[4], r[5], n_bins) for r in stats])
        if stats else np.zeros((0, n_bins), dtype=np.int64),
    )
    found = conn.execute("SELECT feature, activation, oid, focus, tokens FROM examples WHERE "
                         "layer = ? AND kind = 0", (layer,)).fetchall()
    tops = (np.array([r[0] for r in found], dtype=np.int64),
            np.array([r[1] for r in found], dtype=np.float32),
            np.array([r[2] for r in found], dtype=np.int64),
            np.array([r[3] for r in found], dtype=np.int64),
            [r[4] for r in found])
    found = conn.execute("SELECT feature, sample_key, oid FROM examples WHERE layer = ? AND "
                         "kind = 1", (layer,)).fetchall()
    samples = (np.array([r[0] for r in found], dtype=np.int64),
               np.array([r[1] for r in found], dtype=np.int64),
               np.array([r[2] for r in found], dtype=np.int64))
    return rows, tops, samples
