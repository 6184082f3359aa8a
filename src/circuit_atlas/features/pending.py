"""Example-row changes buffered between commits, written as their net effect.

Early in a build most entries of a top or sample list are replaced again within seconds; writing
each change to SQLite at once would insert and delete the same rows many times. The buffer keeps
inserted rows by key until the next commit: an entry that leaves its list before the commit is
dropped from the buffer instead of being written and deleted, and the rows that remain are
inserted in key order, which keeps SQLite's B-tree writes local.
"""

from __future__ import annotations

import sqlite3

import numpy as np

from circuit_atlas.features.accumulator import ExampleRows, RemovedRows

Key = tuple[int, int, int, int]  # (layer, feature, kind, oid)


class PendingExamples:
    """Net example inserts and deletes since the last commit."""

    def __init__(self) -> None:
        self.inserts: dict[Key, tuple] = {}
        self.deletes: list[Key] = []

    def __len__(self) -> int:
        return len(self.inserts) + len(self.deletes)

    def add(self, layer: int, rows: ExampleRows) -> None:
        """New entries with their contexts (as SQL row tuples)."""
        if not len(rows):
            return
        tokens = np.ascontiguousarray(rows.tokens, dtype="<i4")
        acts = np.ascontiguousarray(rows.acts, dtype="<f4")
        columns = zip(rows.features.tolist(), rows.oids.tolist(), rows.activations.tolist(),
                      rows.keys.tolist(), rows.focus.tolist(), rows.starts.tolist(), rows.stops.tolist())
        for i, (feature, oid, activation, key, focus, start, stop) in enumerate(columns):
            self.inserts[(layer, feature, rows.kind, oid)] = (
                layer, feature, rows.kind, oid, activation, key, focus,
                tokens[i, start:stop].tobytes(), acts[i, start:stop].tobytes())

    def remove(self, layer: int, rows: RemovedRows) -> None:
        """Entries that left their lists: forgotten if not yet written, else deleted at commit."""
        for feature, oid in zip(rows.features.tolist(), rows.oids.tolist()):
            key = (layer, feature, rows.kind, oid)
            if self.inserts.pop(key, None) is None:
                self.deletes.append(key)

    def flush(self, conn: sqlite3.Connection) -> None:
        """Write the net changes (inside the caller's transaction) and empty the buffer."""
        if self.deletes:
            conn.executemany("DELETE FROM examples WHERE layer = ? AND feature = ? AND kind = ? "
                             "AND oid = ?", sorted(self.deletes))
        if self.inserts:
            conn.executemany(
                "INSERT INTO examples (layer, feature, kind, oid, activation, sample_key, focus, "
                "tokens, acts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (self.inserts[key] for key in sorted(self.inserts)))
        self.inserts.clear()
        self.deletes.clear()
