"""What the graph browser lists about each graph, read without loading any graph.

Bundles written since the summary was added carry it in `bundle.json` (`graph/bundle.py`:
creation time, model, transcoders, sizes, replacement and completeness). For older bundles and
for loose graph-JSON files the fields come from the file's metadata and its size on disk: node
and link counts by counting their keys in the raw bytes (one pass, no JSON parse, so a folder of
large circuit-tracer files lists quickly), the date from the file's modification time, and no
scores (they need the native graph).

Nothing here returns a filesystem path: a model named by a local folder is shown by the folder's
name (the bundled demo model as ``demo``).
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from circuit_atlas.graph.bundle import read_bundle_info
from circuit_atlas.io.presets import MODEL_PRESETS
from circuit_atlas.io.untrusted import printable

MAX_COUNTED_BYTES = 256 * 1024 * 1024
_NODE_KEY = re.compile(rb'"node_id"\s*:')
_LINK_KEY = re.compile(rb'"source"\s*:')
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
SUMMARY_FIELDS = ("created", "model", "transcoders", "n_tokens", "n_features", "n_nodes",
                  "n_links", "replacement", "completeness")
MAX_TEXT = 200


def checked(key: str, value: Any) -> Any:
    """A summary field of the type the API promises, or None: `bundle.json` and graph metadata
    are files anyone may have written."""
    if key == "created":
        try:
            return datetime.fromisoformat(value).isoformat() if isinstance(value, str) else None
        except ValueError:
            return None
    if key in ("model", "transcoders"):
        return printable(value)[:MAX_TEXT] if isinstance(value, str) and value else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if key.startswith("n_"):
        return int(value) if float(value).is_integer() and 0 <= value < 10**12 else None
    return float(value) if math.isfinite(value) and 0 <= value <= 1 else None


def display_ref(name: Any) -> str | None:
    """A model or transcoder reference as the UI may show it: hub ids and preset names as they
    are, a local folder by its last component (a bundled preset's folder by the preset name)."""
    if not isinstance(name, str) or not name.strip():
        return None
    if not (name.startswith(("/", "~", ".", "\\")) or _DRIVE.match(name)):
        return name
    for preset, folder in MODEL_PRESETS.items():
        try:
            if Path(name).expanduser().resolve() == folder.path.resolve():
                return preset
        except (OSError, RuntimeError):
            continue
    parts = [part for part in re.split(r"[\\/]+", name) if part not in ("", ".", "..", "~")]
    return parts[-1] if parts else None


def _mtime_iso(paths: list[Path | None]) -> str | None:
    times = []
    for path in paths:
        try:
            if path is not None:
                times.append(path.stat().st_mtime)
        except OSError:
            continue
    if not times:
        return None
    return datetime.fromtimestamp(max(times), tz=timezone.utc).isoformat(timespec="seconds")


def _count_keys(path: Path | None) -> tuple[int | None, int | None]:
    """(nodes, links) of a graph-JSON file, counted in its bytes (None when too large)."""
    try:
        if path is None or path.stat().st_size > MAX_COUNTED_BYTES:
            return None, None
        raw = path.read_bytes()
    except OSError:
        return None, None
    return len(_NODE_KEY.findall(raw)), len(_LINK_KEY.findall(raw))


def listing_fields(folder: Path, native_dir: Path | None, json_path: Path | None,
                   metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The `SUMMARY_FIELDS` of one graph (None where unknown)."""
    fields: dict[str, Any] = dict.fromkeys(SUMMARY_FIELDS)
    info = metadata.get("info") if isinstance(metadata.get("info"), Mapping) else {}
    fields["model"] = info.get("model")
    fields["transcoders"] = metadata.get("scan")
    tokens = metadata.get("prompt_tokens")
    fields["n_tokens"] = len(tokens) if isinstance(tokens, list) else None
    bundle = read_bundle_info(folder) if native_dir is not None or json_path is not None else None
    summary = (bundle or {}).get("summary")
    if isinstance(summary, Mapping):
        fields.update({key: summary.get(key) for key in SUMMARY_FIELDS if summary.get(key) is not None})
    else:
        fields["created"] = _mtime_iso([native_dir, json_path])
        fields["n_nodes"], fields["n_links"] = _count_keys(json_path)
    fields = {key: checked(key, value) for key, value in fields.items()}
    fields["model"] = display_ref(fields["model"])
    fields["transcoders"] = display_ref(fields["transcoders"])
    return fields
