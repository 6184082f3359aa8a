"""Per-graph annotations (labels, supernodes, pinned sets) stored as JSON next to the graph.

Why a merge-patch store: several browser tabs (or a tab and a notebook, or two explorer
processes on one data folder) may save at once, and a save that replaces the whole document
would silently drop the other writer's edits. Every write is a *patch* (RFC 7396 style: a key set
to ``null`` or ``""`` deletes it) applied to the latest file contents under a lock that holds
across threads (a `threading.Lock`) and processes (a lock file beside the document, taken with
`filelock`), so concurrent saves of different keys all survive. Files are replaced atomically
(temp file in the same folder, fsync, ``os.replace``), so a crash mid-write leaves the previous
version intact.

The shape of a patch is `schemas.AnnotationPatch`; the stored document is checked against
`schemas.Annotations` when read, since anyone may have edited it. Writes go only to paths inside
the data folder the store was made for, never through a symlink.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from filelock import FileLock
from filelock import Timeout as LockTimeout
from pydantic import TypeAdapter, ValidationError

from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.io.atomic import atomic_write_json
from circuit_atlas.io.untrusted import UntrustedJsonError, read_json
from circuit_atlas.server.schemas import AnnotationPatch, Supernode, describe_errors

ANNOTATION_VERSION = 1

# Sections of the document and what each maps keys to.
#   node_labels:    node_id -> label (one node)
#   feature_labels: str(node "feature" value) -> label (every position of a feature, as the
#                   circuit-tracer frontend's "clerps" do)
#   supernodes:     supernode id -> {"name": str, "members": [node_id, ...]}
#   pinned_sets:    name -> [node_id, ...]
SECTIONS: tuple[str, ...] = ("node_labels", "feature_labels", "supernodes", "pinned_sets")
_STORED_SECTIONS: dict[str, TypeAdapter] = {
    "node_labels": TypeAdapter(dict[str, str]),
    "feature_labels": TypeAdapter(dict[str, str]),
    "supernodes": TypeAdapter(dict[str, Supernode]),
    "pinned_sets": TypeAdapter(dict[str, list[str]]),
}
MAX_FILE_BYTES = 256 * 1024 * 1024
LOCK_TIMEOUT_S = 20.0


class AnnotationError(CircuitAtlasError):
    """An annotation patch is malformed (wrong types, sizes): the request is at fault."""


class AnnotationFileError(CircuitAtlasError):
    """The stored annotations file is unreadable or invalid, or its path is not one the server
    writes (a symlink, outside the data folder): the data folder is at fault, not the request."""


class AnnotationBusy(CircuitAtlasError):
    """Another writer held the annotations file's lock for longer than `LOCK_TIMEOUT_S`."""


def empty_annotations() -> dict[str, Any]:
    """The document a graph has before anyone annotates it."""
    doc: dict[str, Any] = {"version": ANNOTATION_VERSION, "revision": 0, "updated": None}
    for section in SECTIONS:
        doc[section] = {}
    return doc


def validate_patch(patch: Any) -> dict[str, dict[str, Any]]:
    """Check a patch against `schemas.AnnotationPatch`; return it with every value normalised
    (member lists without repeats).

    ``None`` values (and empty label strings) are kept as ``None``: they mean "delete this key".
    """
    if not isinstance(patch, AnnotationPatch):
        if not isinstance(patch, Mapping):
            raise AnnotationError("the annotation patch must be a JSON object")
        try:
            patch = AnnotationPatch.model_validate(dict(patch))
        except ValidationError as exc:
            raise AnnotationError(f"annotations: {describe_errors(exc.errors(), skip=())}") from None
    clean: dict[str, dict[str, Any]] = {}
    for section in SECTIONS:
        entries = getattr(patch, section)
        if entries is None:
            continue
        out: dict[str, Any] = {}
        for key, value in entries.items():
            if value is None or (value == "" and section.endswith("_labels")):
                out[key] = None
            elif section == "supernodes":
                out[key] = {"name": value.name, "members": list(dict.fromkeys(value.members))}
            elif section == "pinned_sets":
                out[key] = list(dict.fromkeys(value))
            else:
                out[key] = value
        clean[section] = out
    return clean


def apply_patch(doc: dict[str, Any], patch: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Return a new document: ``doc`` with ``patch`` merged in key by key."""
    new = {k: (dict(v) if isinstance(v, dict) else v) for k, v in doc.items()}
    for section, entries in patch.items():
        target = new.setdefault(section, {})
        for key, value in entries.items():
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value
    new["revision"] = int(doc.get("revision", 0)) + 1
    new["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return new


class AnnotationStore:
    """Reads and patches annotation files, one lock per file.

    The lock makes read-modify-write of one file a critical section across the server's worker
    threads and across processes, so two concurrent patches cannot both read revision ``n`` and
    overwrite each other. `root`: the data folder; files outside it are never written.
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = None if root is None else Path(root).resolve()
        self._locks: dict[Path, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def _lock_for(self, path: Path) -> threading.Lock:
        key = Path(os.path.abspath(path))
        with self._locks_guard:
            lock = self._locks.get(key)
            if lock is None:
                lock = self._locks[key] = threading.Lock()
            return lock

    def checked_path(self, path: str | Path) -> Path:
        """`path` if the server may read and write it: not a symlink, and (with a `root`) in a
        folder that resolves inside the data folder; else `AnnotationFileError`."""
        path = Path(path)
        for candidate in (path, lock_path_for(path)):
            if candidate.is_symlink():
                raise AnnotationFileError(
                    f"{candidate} is a symlink; the server does not follow links when it saves "
                    "annotations")
        if self.root is not None:
            try:
                folder = path.parent.resolve(strict=True)
            except (OSError, RuntimeError):
                folder = None
            if folder is None or not (folder == self.root or folder.is_relative_to(self.root)):
                raise AnnotationFileError(
                    f"refusing to use annotations file {path}: it is not inside the data folder")
        return path

    def read(self, path: Path) -> dict[str, Any]:
        """The stored document, or an empty one when the file does not exist yet."""
        path = self.checked_path(path)
        try:
            raw = read_json(path, max_bytes=MAX_FILE_BYTES)
        except FileNotFoundError:
            return empty_annotations()
        except OSError as exc:
            raise AnnotationFileError(f"cannot read annotations file {path}: {exc}") from exc
        except UntrustedJsonError as exc:
            raise AnnotationFileError(f"annotations file {path} is not valid JSON: {exc}") from exc
        return _checked_document(path, raw)

    def patch(self, path: Path, patch: Any) -> dict[str, Any]:
        """Validate ``patch``, merge it into the file under its lock, and return the new doc."""
        clean = validate_patch(patch)
        path = self.checked_path(path)
        with self._lock_for(path), _ProcessLock(path):
            new = apply_patch(self.read(path), clean)
            atomic_write_json(path, new, sort_keys=True)
            return new


def lock_path_for(path: Path) -> Path:
    """The hidden lock file beside an annotations file (kept, so waiters share one inode)."""
    return path.with_name(f".{path.name}.lock")


class _ProcessLock:
    """The cross-process lock of one annotations file; a timeout is `AnnotationBusy`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = FileLock(str(lock_path_for(path)), timeout=LOCK_TIMEOUT_S)

    def __enter__(self) -> None:
        try:
            self.lock.acquire()
        except LockTimeout:
            raise AnnotationBusy(
                f"annotations of {self.path.name} are being saved by another process; try again"
            ) from None

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def _checked_document(path: Path, raw: Any) -> dict[str, Any]:
    """The stored document with every field checked (anyone may have edited the file)."""
    if not isinstance(raw, dict):
        raise AnnotationFileError(f"annotations file {path} must hold a JSON object")
    doc = empty_annotations()
    revision = raw.get("revision", 0)
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
        raise AnnotationFileError(
            f"annotations file {path}: revision must be a non-negative integer, got "
            f"{str(revision)[:40]!r}")
    updated = raw.get("updated")
    doc["revision"], doc["updated"] = revision, updated if isinstance(updated, str) else None
    for section, adapter in _STORED_SECTIONS.items():
        try:
            doc[section] = adapter.validate_python(raw.get(section) or {}, strict=True)
        except ValidationError as exc:
            problems = describe_errors(exc.errors(), skip=())
            raise AnnotationFileError(
                f"annotations file {path}: {section}: {problems}; fix or remove these entries"
            ) from None
    doc["supernodes"] = {key: value.model_dump() for key, value in doc["supernodes"].items()}
    return doc
