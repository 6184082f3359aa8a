"""Per-graph annotations (labels, supernodes, pinned sets) stored as JSON next to the graph.

Why a merge-patch store: several browser tabs (or a tab and a notebook) may save at once, and a
save that replaces the whole document would silently drop the other writer's edits. Every write
is a *patch* (RFC 7396 style: a key set to ``null`` or ``""`` deletes it) applied to the latest
file contents under a per-file lock, so concurrent saves of different keys all survive. Files are
replaced atomically (temp file in the same folder, fsync, ``os.replace``), so a crash mid-write
leaves the previous version intact.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.io.atomic import atomic_write_json

ANNOTATION_VERSION = 1

# Sections of the document and what each maps keys to.
#   node_labels:    node_id -> label (one node)
#   feature_labels: str(node "feature" value) -> label (every position of a feature, as the
#                   circuit-tracer frontend's "clerps" do)
#   supernodes:     supernode id -> {"name": str, "members": [node_id, ...]}
#   pinned_sets:    name -> [node_id, ...]
SECTIONS: tuple[str, ...] = ("node_labels", "feature_labels", "supernodes", "pinned_sets")

MAX_KEY_CHARS = 200
MAX_LABEL_CHARS = 2000
MAX_MEMBERS = 2000
MAX_ENTRIES_PER_SECTION = 100_000


class AnnotationError(CircuitAtlasError):
    """An annotation patch is malformed (wrong types, sizes) or the stored file is unreadable."""


def empty_annotations() -> dict[str, Any]:
    """The document a graph has before anyone annotates it."""
    doc: dict[str, Any] = {"version": ANNOTATION_VERSION, "revision": 0, "updated": None}
    for section in SECTIONS:
        doc[section] = {}
    return doc


def _check_key(section: str, key: Any) -> str:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS:
        raise AnnotationError(
            f"annotations.{section}: keys must be non-empty strings of at most "
            f"{MAX_KEY_CHARS} characters, got {str(key)[:60]!r}"
        )
    return key


def _check_id_list(where: str, value: Any) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_MEMBERS:
        raise AnnotationError(f"{where} must be a list of at most {MAX_MEMBERS} node ids")
    out: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item or len(item) > MAX_KEY_CHARS:
            raise AnnotationError(f"{where} holds an invalid node id {str(item)[:60]!r}")
        if item not in out:
            out.append(item)
    return out


def _check_value(section: str, key: str, value: Any) -> Any:
    """Validate one non-null patch value and return its normalised form."""
    where = f"annotations.{section}[{key!r}]"
    if section in ("node_labels", "feature_labels"):
        if not isinstance(value, str) or len(value) > MAX_LABEL_CHARS:
            raise AnnotationError(f"{where} must be a string of at most {MAX_LABEL_CHARS} chars")
        return value
    if section == "pinned_sets":
        return _check_id_list(where, value)
    # supernodes
    if not isinstance(value, dict):
        raise AnnotationError(f"{where} must be an object with 'name' and 'members'")
    unknown = set(value) - {"name", "members"}
    if unknown:
        raise AnnotationError(f"{where} has unknown fields {sorted(unknown)}")
    name = value.get("name", "")
    if not isinstance(name, str) or len(name) > MAX_LABEL_CHARS:
        raise AnnotationError(f"{where}.name must be a string of at most {MAX_LABEL_CHARS} chars")
    members = _check_id_list(f"{where}.members", value.get("members", []))
    if len(members) < 1:
        raise AnnotationError(f"{where}.members must name at least one node")
    return {"name": name, "members": members}


def validate_patch(patch: Any) -> dict[str, dict[str, Any]]:
    """Check a patch's shape and sizes; return it with every value normalised.

    ``None`` values (and empty label strings) are kept as ``None``: they mean "delete this key".
    """
    if not isinstance(patch, Mapping):
        raise AnnotationError("the annotation patch must be a JSON object")
    unknown = set(patch) - set(SECTIONS)
    if unknown:
        raise AnnotationError(
            f"unknown annotation sections {sorted(unknown)}; expected some of {list(SECTIONS)}"
        )
    clean: dict[str, dict[str, Any]] = {}
    for section, entries in patch.items():
        if entries is None:
            continue
        if not isinstance(entries, Mapping):
            raise AnnotationError(f"annotations.{section} must be an object")
        if len(entries) > MAX_ENTRIES_PER_SECTION:
            raise AnnotationError(f"annotations.{section} has too many entries")
        out: dict[str, Any] = {}
        for key, value in entries.items():
            key = _check_key(section, key)
            if value is None or (value == "" and section.endswith("_labels")):
                out[key] = None
            else:
                out[key] = _check_value(section, key, value)
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
    threads, so two concurrent patches cannot both read revision ``n`` and overwrite each other.
    """

    def __init__(self) -> None:
        self._locks: dict[Path, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def _lock_for(self, path: Path) -> threading.Lock:
        key = Path(os.path.abspath(path))
        with self._locks_guard:
            lock = self._locks.get(key)
            if lock is None:
                lock = self._locks[key] = threading.Lock()
            return lock

    def read(self, path: Path) -> dict[str, Any]:
        """The stored document, or an empty one when the file does not exist yet."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return empty_annotations()
        except OSError as exc:
            raise AnnotationError(f"cannot read annotations file {path}: {exc}") from exc
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AnnotationError(f"annotations file {path} is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise AnnotationError(f"annotations file {path} must hold a JSON object")
        doc = empty_annotations()
        for key in ("revision", "updated"):
            if key in raw:
                doc[key] = raw[key]
        for section in SECTIONS:
            if isinstance(raw.get(section), dict):
                doc[section] = raw[section]
        return doc

    def patch(self, path: Path, patch: Any) -> dict[str, Any]:
        """Validate ``patch``, merge it into the file under its lock, and return the new doc."""
        clean = validate_patch(patch)
        path = Path(path)
        with self._lock_for(path):
            new = apply_patch(self.read(path), clean)
            atomic_write_json(path, new, sort_keys=True)
            return new
