"""Crash-safe JSON writes: readers see the old file or the complete new one, never a torn one.

The one JSON writer for files other processes may read while we write them: graph bundles,
graph JSON and its index, annotations, feature labels, transcoder configs. `atomic_files` does
the same for files written by other libraries (a graph's safetensors and its metadata, together).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, TextIO


def atomic_write_json(path: Path, obj: Any, *, indent: int | None = 1, sort_keys: bool = False,
                      allow_nan: bool = True) -> None:
    """Write ``obj`` to ``path`` so readers see either the old file or the whole new one.

    ``allow_nan=False`` refuses NaN and infinities (ValueError) for files other tools parse as
    strict JSON (graph JSON).
    """
    _replace_atomically(path, lambda handle: _dump(obj, handle, indent=indent, sort_keys=sort_keys,
                                                   allow_nan=allow_nan))


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) the same way, for files that are not one JSON document
    (JSON-lines logs)."""
    _replace_atomically(path, lambda handle: handle.write(text))


def _replace_atomically(path: Path, write: Callable[[TextIO], Any]) -> None:
    """One file through `atomic_files`: a temp file in the same folder (so the rename is atomic,
    and created with the mode a new file gets), fsynced before the rename so the new bytes are
    on disk before the name points at them, then the folder fsynced so the rename is durable. A
    failed write leaves the old file and no temp file."""
    with atomic_files(Path(path)) as (tmp,):
        with open(tmp, "w", encoding="utf-8") as handle:
            write(handle)


def _dump(obj: Any, handle: Any, *, indent: int | None, sort_keys: bool, allow_nan: bool) -> None:
    """Serialise ``obj`` into an open text file (a seam tests use to simulate a crash)."""
    json.dump(obj, handle, indent=indent, ensure_ascii=False, sort_keys=sort_keys,
              allow_nan=allow_nan)
    handle.write("\n")


def _fsync_dir(folder: Path) -> None:
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def atomic_files(*paths: Path) -> Iterator[list[Path]]:
    """Temp paths beside ``paths``, for the block to write (by name, so any library's writer can).

    When the block returns, each temp file is fsynced and renamed onto its path, then the folders
    are fsynced. When the block raises, or a rename fails, the temp files are removed and the
    files already renamed are put back: the old files are left exactly as they were. Files that
    belong together (a graph's tensors and metadata) are renamed one after the other, so only a
    crash between those renames can mix them."""
    paths = tuple(Path(p) for p in paths)
    temps = [_temp_beside(path) for path in paths]
    try:
        modes = [tmp.stat().st_mode & 0o777 for tmp in temps]
        yield temps
        for tmp, mode in zip(temps, modes):
            os.chmod(tmp, mode)  # some writers (safetensors) replace the file with a 0600 one
            _fsync_file(tmp)
        _replace_all(temps, paths)
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise
    for folder in dict.fromkeys(path.parent for path in paths):
        _fsync_dir(folder)


def _temp_beside(path: Path) -> Path:
    """A new empty file beside `path`, created the way `open(path, "w")` would create `path`
    (mode 0o666 less the umask; `mkstemp`'s 0o600 would make shipped or shared files, such as
    the demo's transcoders, unreadable to other users)."""
    while True:
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp


def _replace_all(temps: list[Path], paths: tuple[Path, ...]) -> None:
    """Rename each temp file onto its path; if one rename fails, undo those already done."""
    done: list[tuple[Path, Path | None]] = []  # (path, the old file kept aside, or None)
    kept: Path | None = None
    try:
        for tmp, path in zip(temps, paths):
            kept = _keep_aside(path) if len(paths) > 1 else None
            os.replace(tmp, path)
            done.append((path, kept))
            kept = None
    except BaseException:
        if kept is not None:  # the failed rename's old file is still in place: drop its copy
            kept.unlink(missing_ok=True)
        for path, old in reversed(done):
            if old is None:
                path.unlink(missing_ok=True)
            else:
                os.replace(old, path)
        raise
    for _, old in done:
        if old is not None:
            old.unlink(missing_ok=True)


def _keep_aside(path: Path) -> Path | None:
    """A second name for the current file at ``path`` (None when there is none), so it can be
    put back; a hard link costs no copy, a copy serves where links are not supported."""
    if not path.exists():
        return None
    aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}.old")
    try:
        os.link(path, aside)
    except OSError:
        shutil.copy2(path, aside)
    return aside


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
