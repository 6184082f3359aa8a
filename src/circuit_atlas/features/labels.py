"""User labels of features, in `labels.json` beside the store's database.

Why a separate JSON file: labels are user data, written while a build may hold the database's
write lock for many seconds, and kept when the store is rebuilt. Each write re-reads the file
under an exclusive lock (so two writers never drop each other's labels) and replaces it
atomically (temp file + rename), so a crash leaves the old or the new file, never a torn one.
Format: `{"version": 1, "labels": {"<layer>:<feature>": "text"}}`.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from circuit_atlas.features.errors import FeatureStoreError
from circuit_atlas.io.atomic import atomic_write_json

LABELS_FILE = "labels.json"
MAX_LABEL_CHARS = 2000


def read_labels(folder: Path) -> dict[tuple[int, int], str]:
    """All labels of the store in `folder`, keyed by (layer, feature)."""
    path = folder / LABELS_FILE
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        entries = doc["labels"]
        return {_parse_key(key): str(text) for key, text in entries.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FeatureStoreError(f"labels file {path} is unreadable: {exc}") from None


def write_label(folder: Path, layer: int, feature: int, text: str | None) -> None:
    """Set (or with None / empty text, delete) one label."""
    if text is not None and not isinstance(text, str):
        raise FeatureStoreError(f"a label must be a string, got {type(text).__name__}")
    if text is not None and len(text) > MAX_LABEL_CHARS:
        raise FeatureStoreError(f"labels are limited to {MAX_LABEL_CHARS} characters")
    with _locked(folder):
        labels = read_labels(folder)
        if text:
            labels[(layer, feature)] = text
        else:
            labels.pop((layer, feature), None)
        doc = {"version": 1, "labels": {f"{l}:{f}": t for (l, f), t in sorted(labels.items())}}
        atomic_write_json(folder / LABELS_FILE, doc)


def _parse_key(key: str) -> tuple[int, int]:
    layer, feature = key.split(":")
    return int(layer), int(feature)


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Exclusive advisory lock on `<folder>/.labels.lock` (no lock where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(folder / ".labels.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
