"""Finds the graphs in a data folder and loads them, never touching anything outside it.

Discovery walks the folder itself, one level of subfolders for loose graph-JSON files and up
to three levels for bundles (layout: ``bundle.py``). Every
path is resolved and must stay inside the resolved data folder, so a symlink pointing elsewhere
is ignored rather than followed. Clients name graphs only by id; ids map to paths through a
table built here, so no client string is ever joined onto a file path.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable

from circuit_atlas.errors import CircuitAtlasError, GraphFileError
from circuit_atlas.graph import read_graph_json
from circuit_atlas.graph.bundle import (
    ANNOTATIONS_SUFFIX,
    DEFAULT_EDGE_THRESHOLD,
    DEFAULT_NODE_THRESHOLD,
    NATIVE_DIR,
    NOT_GRAPH_FILES,
    annotations_path_for,
    bundle_settings,
    read_bundle_info,
)
from circuit_atlas.io.checks import check_slug
from circuit_atlas.io.untrusted import printable
from circuit_atlas.server.listing import listing_fields

MAX_GRAPH_JSON_BYTES = 1024 * 1024 * 1024
_METADATA_PREFIX_BYTES = 1 << 20
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_BUNDLE_DEPTH = 3  # DIR/<group>/<subgroup>/<bundle>
MAX_SCANNED_ENTRIES = 10_000


class GraphNotFound(CircuitAtlasError):
    """No graph with the requested id exists in the data folder."""


class GraphUnreadable(CircuitAtlasError):
    """A graph's files exist but cannot be parsed."""


@dataclass(frozen=True)
class GraphEntry:
    """One graph in the data folder; ``native_dir`` and/or ``json_path`` is set."""

    id: str
    slug: str
    folder: Path
    native_dir: Path | None
    json_path: Path | None
    annotations_path: Path
    node_threshold: float = DEFAULT_NODE_THRESHOLD
    edge_threshold: float = DEFAULT_EDGE_THRESHOLD
    warnings: tuple[str, ...] = ()
    summary: dict[str, Any] = field(default_factory=dict, compare=False)

    def stamp(self) -> tuple:
        """Changes whenever the graph's files change, so caches know to reload."""
        parts: list[Any] = []
        for path in (self.native_dir, self.json_path):
            if path is None:
                parts.append(None)
                continue
            try:
                if path.is_dir():
                    parts.append(
                        tuple(sorted((p.name, p.stat().st_mtime_ns) for p in path.iterdir()))
                    )
                else:
                    st = path.stat()
                    parts.append((st.st_mtime_ns, st.st_size))
            except OSError:
                parts.append("missing")
        return tuple(parts)


class LRUCache:
    """A small thread-safe LRU cache that builds missing values under a per-key lock."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._guard = threading.Lock()
        self._key_locks: dict[Hashable, threading.Lock] = {}

    def get_or_build(self, key: Hashable, build: Callable[[], Any]) -> Any:
        with self._guard:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
            lock = self._key_locks.setdefault(key, threading.Lock())
        with lock:  # one builder per key; others wait for its result
            with self._guard:
                if key in self._data:
                    return self._data[key]
            value = build()
            with self._guard:
                self._data[key] = value
                self._data.move_to_end(key)
                while len(self._data) > self.maxsize:
                    self._data.popitem(last=False)
                self._key_locks.pop(key, None)
            return value


def resolve_inside(path: Path, root: Path) -> Path | None:
    """``path`` resolved, or ``None`` when it resolves outside ``root`` (symlink escape)."""
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return resolved if resolved == root or resolved.is_relative_to(root) else None


def read_json_metadata(path: Path) -> dict[str, Any]:
    """The ``metadata`` object of a graph-JSON file without parsing the whole file.

    Writers put ``metadata`` first (`docs/graph-json.md` §1), so decoding from the key onwards in the
    first MiB usually suffices; otherwise the whole file is parsed.
    """
    with open(path, "rb") as handle:
        head = handle.read(_METADATA_PREFIX_BYTES).decode("utf-8", errors="ignore")
    match = re.search(r'"metadata"\s*:\s*', head)
    if match:
        try:
            value, _ = json.JSONDecoder().raw_decode(head, match.end())
            if isinstance(value, dict):
                return value
        except (ValueError, RecursionError):  # cut off, or not JSON we can use: parse it all
            pass
    doc = load_graph_json(path)
    metadata = doc.get("metadata", {})
    return metadata if isinstance(metadata, dict) else {}


def list_summary(metadata: dict[str, Any]) -> dict[str, Any]:
    """The graph-list fields of a graph's metadata, each of the type the API promises: the
    metadata comes from a file anyone may have written."""
    prompt = metadata.get("prompt")
    tokens = metadata.get("prompt_tokens")
    scan = metadata.get("scan")
    return {
        "prompt": printable(prompt) if isinstance(prompt, str) else "",
        "prompt_tokens": ([printable(t) for t in tokens]
                          if isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)
                          else []),
        "scan": printable(scan) if isinstance(scan, str) else None,
    }


def usable_slug(name: str) -> str:
    """A valid slug (`io.checks.check_slug`) made from a folder name: itself when valid, else
    with the unsafe characters replaced, else "graph"."""
    candidates = (name, _ID_UNSAFE.sub("-", printable(name)).strip("-.")[:128].removesuffix(".json"))
    for candidate in candidates:
        try:
            return check_slug(candidate)
        except CircuitAtlasError:
            continue
    return "graph"


def load_graph_json(path: Path) -> dict[str, Any]:
    """Parse a graph-JSON file, normalised by the graph package's reader (both qParams forms,
    both error-id forms)."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise GraphUnreadable(f"graph file {path} is not readable: {exc}") from exc
    if size > MAX_GRAPH_JSON_BYTES:
        raise GraphUnreadable(f"graph file {path} is larger than {MAX_GRAPH_JSON_BYTES} bytes")
    try:
        return read_graph_json(path)
    except GraphFileError as exc:
        raise GraphUnreadable(str(exc)) from exc
    except (OSError, ValueError, RecursionError) as exc:
        raise GraphUnreadable(f"graph file {path} is not readable JSON: {exc}") from exc


def _looks_like_graph_json(path: Path) -> bool:
    name = path.name
    if not name.endswith(".json") or name.endswith(ANNOTATIONS_SUFFIX) or name in NOT_GRAPH_FILES:
        return False
    if name.startswith("."):
        return False
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096).lstrip()
    except OSError:
        return False
    return head.startswith(b"{") and (b'"metadata"' in head or b'"nodes"' in head)


class GraphCatalog:
    """The graphs in one data folder, re-discovered on each listing (a few stat calls)."""

    def __init__(self, root: str | Path) -> None:
        root_path = Path(root).expanduser()
        if not root_path.is_dir():
            raise CircuitAtlasError(f"data folder {root_path} does not exist or is not a folder")
        self.root = root_path.resolve()
        self._entries: dict[str, GraphEntry] = {}
        self._meta_cache: dict[tuple, dict[str, Any]] = {}
        self._lock = threading.Lock()

    # -- discovery ---------------------------------------------------------------------------
    def _bundle_entry(self, folder: Path) -> GraphEntry | None:
        info = read_bundle_info(folder)
        native = resolve_inside(folder / NATIVE_DIR, self.root)
        if native is not None and not native.is_dir():
            native = None
        if info is None and native is None:
            return None
        # Every field of bundle.json is checked: its slug names the files we read and write.
        settings = bundle_settings(info)
        slug = settings.slug or usable_slug(folder.name)
        json_path = resolve_inside(folder / f"{slug}.json", self.root)
        return GraphEntry(
            id=slug,
            slug=slug,
            folder=folder,
            native_dir=native,
            json_path=json_path if json_path and json_path.is_file() else None,
            annotations_path=annotations_path_for(folder, slug),
            node_threshold=settings.node_threshold,
            edge_threshold=settings.edge_threshold,
            warnings=settings.problems,
        )

    def _loose_entries(self, folder: Path) -> list[GraphEntry]:
        out = []
        for path in sorted(folder.iterdir()):
            resolved = resolve_inside(path, self.root)
            if resolved is None or not resolved.is_file() or not _looks_like_graph_json(path):
                continue
            slug = path.name[: -len(".json")]
            out.append(
                GraphEntry(
                    id=slug,
                    slug=slug,
                    folder=folder,
                    native_dir=None,
                    json_path=resolved,
                    annotations_path=annotations_path_for(folder, slug),
                )
            )
        return out

    def _discover(self) -> list[GraphEntry]:
        found: list[GraphEntry] = []
        own = self._bundle_entry(self.root)
        if own is not None:
            found.append(own)
        else:
            found.extend(self._loose_entries(self.root))
        found.extend(self._walk(self.root, 1, skip=NATIVE_DIR if own is not None else None,
                                budget=[MAX_SCANNED_ENTRIES]))
        return found

    def _walk(self, folder: Path, depth: int, skip: str | None, budget: list[int]) -> list[GraphEntry]:
        """The graphs in the subfolders of `folder`: bundles down to `MAX_BUNDLE_DEPTH` levels
        below the data folder (`trace --prompts --out DIR/cities` beside `DIR/languages`, served
        as DIR), loose graph-JSON files one level down only. A bundle's own folders are not
        entered; below the first level at most `MAX_SCANNED_ENTRIES` entries are looked at, so a
        huge tree (a feature store's files) cannot stall the listing."""
        out: list[GraphEntry] = []
        try:
            subs = sorted(folder.iterdir())
        except OSError:
            return out
        for sub in subs:
            if depth > 1:  # deeper folders may be anything (a feature store's thousands of files)
                budget[0] -= 1
                if budget[0] < 0:
                    break
            if sub.name.startswith(".") or sub.name == skip or not sub.is_dir():
                continue
            if resolve_inside(sub, self.root) is None:
                continue
            entry = self._bundle_entry(sub)
            if entry is not None:
                out.append(entry)
                continue
            if depth == 1:
                out.extend(self._loose_entries(sub))
            if depth < MAX_BUNDLE_DEPTH:
                out.extend(self._walk(sub, depth + 1, None, budget))
        return out

    def refresh(self) -> list[GraphEntry]:
        """Rescan the folder and give every graph a unique, URL-safe id."""
        entries: dict[str, GraphEntry] = {}
        for entry in self._discover():
            base = _ID_UNSAFE.sub("-", entry.slug).strip("-.") or "graph"
            if entry.folder != self.root and base in entries:
                base = _ID_UNSAFE.sub("-", f"{self._id_prefix(entry.folder)}.{base}")
            graph_id, n = base, 2
            while graph_id in entries:
                graph_id, n = f"{base}-{n}", n + 1
            entries[graph_id] = dataclasses.replace(entry, id=graph_id)
        with self._lock:
            self._entries = entries
        return list(entries.values())

    def _id_prefix(self, folder: Path) -> str:
        """What tells apart two graphs of one slug: the folder's name one level down, the
        folders above the bundle deeper down (DIR/cities/dallas: "cities")."""
        parent = folder.parent
        if parent == self.root:
            return folder.name
        try:
            return ".".join(parent.relative_to(self.root).parts)
        except ValueError:
            return folder.name

    def get(self, graph_id: str) -> GraphEntry:
        with self._lock:
            entry = self._entries.get(graph_id)
        if entry is None:
            self.refresh()
            with self._lock:
                entry = self._entries.get(graph_id)
        if entry is None:
            raise GraphNotFound(f"no graph with id {printable(graph_id)[:200]!r} in the data folder")
        return entry

    def shown(self, text: str) -> str:
        """`text` with the data folder's absolute path removed (paths become relative to it):
        messages go to browsers and shared screenshots, and the server's location is nobody's
        business there."""
        root = str(self.root)
        return text.replace(root + os.sep, "").replace(root, ".")

    # -- summaries ---------------------------------------------------------------------------
    def summary(self, entry: GraphEntry, load_native_metadata: Callable[[Path], dict]) -> dict:
        """Metadata for the graph list (prompt, tokens, scan), cached by file stamp."""
        key = (entry.id, entry.stamp())
        cached = self._meta_cache.get(key)
        if cached is None:
            metadata: dict[str, Any] = {}
            try:
                if entry.json_path is not None:
                    metadata = read_json_metadata(entry.json_path)
                elif entry.native_dir is not None:
                    metadata = load_native_metadata(entry.native_dir)
                error = None
            except (CircuitAtlasError, OSError, ValueError, RecursionError) as exc:
                error = self.shown(printable(str(exc)))
            cached = {
                "id": entry.id,
                "slug": printable(entry.slug),
                **list_summary(metadata),
                "has_native": entry.native_dir is not None,
                "has_json": entry.json_path is not None,
                "node_threshold": entry.node_threshold,
                "edge_threshold": entry.edge_threshold,
                "folder": printable(os.path.relpath(entry.folder, self.root)),
                "error": error,
                "warnings": [self.shown(w) for w in entry.warnings],
                **listing_fields(entry.folder, entry.native_dir, entry.json_path, metadata),
            }
            self._meta_cache[key] = cached
        return cached

