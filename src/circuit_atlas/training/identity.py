"""Whether a checkpoint's recorded run settings are those of the run resuming it.

The trainer records the model and corpus as the user gave them (a reference meant to be shown
and shared never becomes a path the user did not type). The same model or corpus can be named in
several ways, though: `demo` and the bundled folder, a relative and an absolute path, a path
through a symlink. A resume must accept those, and checkpoints written when the demo model was
recorded as its install folder must still resume with `--model demo`; only a different model or
corpus is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from circuit_atlas.io.presets import model_preset

LOCATION_KEYS = {"model": model_preset, "corpus": lambda ref: ref}


def same_setting(key: str, saved: Any, now: Any) -> bool:
    """`saved` (from the checkpoint) and `now` name the same thing for setting `key`."""
    if saved == now:
        return True
    resolve = LOCATION_KEYS.get(key)
    if resolve is None or not (isinstance(saved, str) and isinstance(now, str)):
        return False
    return _same_file(resolve(saved), resolve(now))


def _same_file(a: str, b: str) -> bool:
    """Both exist on disk and are the same file or folder (a hub id is never a local path
    unless such a folder exists, and then it is what would be loaded)."""
    try:
        pa, pb = Path(a).expanduser(), Path(b).expanduser()
        return pa.exists() and pb.exists() and pa.samefile(pb)
    except (OSError, ValueError):
        return False
