"""Crash-safe JSON writes: readers see the old file or the complete new one, never a torn one.

The one JSON writer for files other processes may read while we write them: graph bundles,
graph JSON and its index, annotations, feature labels, transcoder configs.
"""

from __future__ import annotations

import json
import os
import tempfile
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
    """Why each step: the temp file lives in the same folder so ``os.replace`` is a rename on one
    file system (atomic); fsync before the rename makes sure the new bytes are on disk before
    the name points at them; fsync of the folder makes the rename itself durable. A failed
    write leaves the old file and no temp file."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


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
