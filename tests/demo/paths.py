"""Find absolute paths recorded in files meant to be shipped or shared: string values of JSON
files, the metadata of safetensors files and the `meta` table of feature stores (SQLite), plus a
raw byte scan of every file for the build machines' work folder."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any, Iterator

from safetensors import safe_open

# "/a/b..." (a POSIX path with at least two parts), "~/...", or a Windows drive path
ABSOLUTE = re.compile(r"^(/[^/\s]+){2,}|^~/|^[A-Za-z]:[\\/]")
WORK_FOLDER = b"/work/"


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _recorded_strings(file: Path) -> Iterator[str]:
    if file.suffix == ".json":
        yield from _strings(json.loads(file.read_text(encoding="utf-8")))
    elif file.suffix == ".safetensors":
        with safe_open(file, "pt") as handle:
            yield from _strings(handle.metadata() or {})
    elif file.suffix == ".sqlite":
        conn = sqlite3.connect(f"file:{file}?mode=ro", uri=True)
        try:
            for key, value in conn.execute("SELECT key, value FROM meta"):
                yield key
                yield from _strings(json.loads(value))
        finally:
            conn.close()


def absolute_paths(folder: Path) -> list[str]:
    """`file: value` for every absolute path recorded under `folder` (empty when there is none)."""
    found = []
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        found += [f"{file}: {s!r}" for s in _recorded_strings(file) if ABSOLUTE.search(s)]
        if WORK_FOLDER in file.read_bytes():
            found.append(f"{file}: contains {WORK_FOLDER!r}")
    return found
