"""Merging the shards of a distributed build into one store.

Every statistic of a store is a function of the *set* of occurrences seen (`accumulator.py`), so
the shards, built from disjoint blocks of the corpus, merge exactly:

* counts, fixed-point sums and histograms add up;
* top lists: the union of the shards' lists, best occurrence per distinct context, the first
  `top_k` by (activation desc, occurrence id asc): a context in the global top k is in the top k
  of the shard that holds its best occurrence, since fewer than k contexts beat it anywhere;
* samples: the union's `n_samples` smallest (key, occurrence id): the same argument;
* logit effects: each layer was computed by one shard and is copied.

Rows are copied byte for byte (blobs included), so the merged store holds exactly the rows a
single process writes. Work goes feature range by feature range so memory stays bounded.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from circuit_atlas.features import storage
from circuit_atlas.features.accumulator import KIND_SAMPLE, KIND_TOP, StatsRows
from circuit_atlas.features.keys import stored_context_hashes

ROWS_PER_CHUNK = 1 << 20  # example rows read at a time, over all shards

_EXAMPLE_COLUMNS = "layer, feature, kind, oid, activation, sample_key, focus, tokens, acts"


def merge_into(conn: sqlite3.Connection, shard_files: list[Path], *, n_layers: int,
               n_features: int, n_bins: int, top_k: int, n_samples: int, before: int,
               after: int) -> None:
    """Write the merged rows of every table but `meta` into `conn` (inside its transaction)."""
    shards = [storage.connect(file, readonly=True) for file in shard_files]
    try:
        per_chunk = max(1, ROWS_PER_CHUNK // (len(shards) * (top_k + n_samples)))
        for layer in range(n_layers):
            for start in range(0, n_features, per_chunk):
                stop = min(start + per_chunk, n_features) - 1
                _merge_stats(conn, shards, layer, start, stop, n_bins)
                _merge_top(conn, shards, layer, start, stop, top_k, before, after)
                _merge_samples(conn, shards, layer, start, stop, n_samples)
            _copy_logits(conn, shards, layer)
    finally:
        for shard in shards:
            shard.close()


def _merge_stats(conn, shards, layer: int, start: int, stop: int, n_bins: int) -> None:
    rows = [r for shard in shards for r in shard.execute(
        "SELECT feature, n_active, n_negative, sum_fixed, hist_offset, histogram FROM stats "
        "WHERE layer = ? AND feature BETWEEN ? AND ?", (layer, start, stop))]
    if not rows:
        return
    features = np.array([r[0] for r in rows], dtype=np.int64)
    unique, slot = np.unique(features, return_inverse=True)
    totals = np.zeros((len(unique), 3), dtype=np.int64)
    np.add.at(totals, slot, np.array([r[1:4] for r in rows], dtype=np.int64))
    histograms = np.zeros((len(unique), n_bins), dtype=np.int64)
    for where, row in zip(slot, rows):
        histograms[where] += storage.unpack_histogram(row[4], row[5], n_bins)
    storage.write_stats(conn, layer, StatsRows(unique, totals[:, 0], totals[:, 1], totals[:, 2],
                                               histograms))


def _example_rows(shards, layer: int, kind: int, start: int, stop: int) -> list[tuple]:
    return [r for shard in shards for r in shard.execute(
        f"SELECT {_EXAMPLE_COLUMNS} FROM examples WHERE layer = ? AND kind = ? AND feature "
        "BETWEEN ? AND ?", (layer, kind, start, stop))]


def _first_per_feature(features: np.ndarray, order: np.ndarray, keep: np.ndarray, limit: int) -> np.ndarray:
    """Of the rows in `order` (grouped by feature) that `keep` allows, the first `limit` of each
    feature, as indices into the original rows."""
    chosen = order[keep[order]]
    grouped = features[chosen]
    starts = np.r_[0, np.flatnonzero(np.diff(grouped)) + 1]
    rank = np.arange(len(chosen)) - np.repeat(starts, np.diff(np.r_[starts, len(chosen)]))
    return chosen[rank < limit]


def _merge_top(conn, shards, layer, start, stop, top_k, before, after) -> None:
    rows = _example_rows(shards, layer, KIND_TOP, start, stop)
    if not rows:
        return
    features = np.array([r[1] for r in rows], dtype=np.int64)
    oids = np.array([r[3] for r in rows], dtype=np.int64)
    values = np.array([r[4] for r in rows], dtype=np.float64)
    contexts = stored_context_hashes([r[6] for r in rows], [r[7] for r in rows], before, after)
    order = np.lexsort((oids, -values, features))
    # the best-ranked row of each (feature, context): np.unique keeps first occurrences
    ranked = np.stack([features[order], contexts[order]], axis=1)
    _, first = np.unique(ranked, axis=0, return_index=True)
    keep = np.zeros(len(rows), dtype=bool)
    keep[order[first]] = True
    _insert(conn, rows, _first_per_feature(features, order, keep, top_k))


def _merge_samples(conn, shards, layer, start, stop, n_samples) -> None:
    rows = _example_rows(shards, layer, KIND_SAMPLE, start, stop)
    if not rows:
        return
    features = np.array([r[1] for r in rows], dtype=np.int64)
    oids = np.array([r[3] for r in rows], dtype=np.int64)
    keys = np.array([r[5] for r in rows], dtype=np.int64)
    order = np.lexsort((oids, keys, features))
    _insert(conn, rows, _first_per_feature(features, order, np.ones(len(rows), dtype=bool), n_samples))


def _insert(conn, rows: list[tuple], chosen: np.ndarray) -> None:
    conn.executemany(f"INSERT INTO examples ({_EXAMPLE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (rows[i] for i in sorted(chosen.tolist(), key=lambda i: rows[i][1:4])))


def _copy_logits(conn, shards, layer: int) -> None:
    for shard in shards:
        rows = shard.execute("SELECT layer, feature, top_ids, top_values, bottom_ids, bottom_values "
                             "FROM logits WHERE layer = ?", (layer,)).fetchall()
        conn.executemany("INSERT OR REPLACE INTO logits (layer, feature, top_ids, top_values, "
                         "bottom_ids, bottom_values) VALUES (?, ?, ?, ?, ?, ?)", rows)
