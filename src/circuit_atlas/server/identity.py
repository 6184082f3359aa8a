"""Whether a model or transcoder name in a graph's files names the one the server holds."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def same_ref(a: Any, b: Any) -> bool:
    """Names match when equal, or when both are local paths to the same folder.

    `b` is the server's own reference: `a` (read from a file anyone can drop in the data folder)
    is only looked up on disk when `b` is a local path, and never when it is a network path."""
    if a == b:
        return True
    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    if a.startswith(("//", "\\\\")):
        return False  # a network path named by a file: never touch it
    try:
        pb = Path(b).expanduser()
        if not pb.exists():  # the server's own reference first: stat a's path only if b is local
            return False
        pa = Path(a).expanduser()
        return pa.exists() and os.path.samefile(pa, pb)
    except (OSError, ValueError):
        return False
