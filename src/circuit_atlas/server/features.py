"""Optional feature details (top examples, promoted/suppressed tokens) for the feature panel.

The explorer works without feature data; `serve --features DIR` plugs a provider in. The
provider protocol is one method, `feature(layer, index)`, which our dashboards store
(`circuit_atlas.features.FeatureStore`) implements itself. Two more stores are read here because
they are plain files other tools already write (`docs/graph-json.md` §10):

* a folder of per-feature JSON files, ``DIR/<layer>/<index>.json`` or ``DIR/<feature>.json``
  (``<feature>`` = Cantor pair of layer and index, circuit-tracer's frontend naming);
* circuit-tracer's binary bundle, ``DIR/index.json.gz`` + data files of length-prefixed
  zlib-compressed JSON records (§10.3).

Records are dicts in the §10.2 shape (``examples_quantiles``, ``top_logits``, ``bottom_logits``,
``act_min``, ``act_max``, ...), which the web panel renders.
"""

from __future__ import annotations

import gzip
import re
import struct
import threading
import zlib
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.features.labels import LABELS_FILE
from circuit_atlas.features.store import FeatureStore, open_feature_store
from circuit_atlas.io.cantor import cantor_pair
from circuit_atlas.io.untrusted import UntrustedJsonError, parse_json, read_json

MAX_FEATURE_RECORD_BYTES = 32 * 1024 * 1024


class FeatureDataError(CircuitAtlasError):
    """A feature file or record of the store is unreadable: the data is at fault, not the
    request (HTTP 422)."""


@runtime_checkable
class FeatureProvider(Protocol):
    """Looks up one feature's details; ``None`` when the store has nothing for it."""

    def feature(self, layer: int, index: int) -> dict[str, Any] | None: ...


class JsonDirFeatureProvider:
    """Per-feature JSON files: ``<root>/<layer>/<index>.json`` or ``<root>/<cantor>.json``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def _read(self, path: Path) -> dict[str, Any] | None:
        # Only names we built from integers are opened, so no traversal is possible; the
        # resolve check still refuses symlinks that point out of the store.
        try:
            resolved = path.resolve(strict=True)
        except (FileNotFoundError, OSError):
            return None
        if not resolved.is_relative_to(self.root) or not resolved.is_file():
            return None
        try:
            data = read_json(resolved, max_bytes=MAX_FEATURE_RECORD_BYTES)
        except (OSError, UntrustedJsonError) as exc:
            raise FeatureDataError(f"feature file {resolved} is not valid JSON: {exc}") from exc
        return data if isinstance(data, dict) else None

    def feature(self, layer: int, index: int) -> dict[str, Any] | None:
        for path in (
            self.root / str(layer) / f"{index}.json",
            self.root / f"{cantor_pair(layer, index)}.json",
        ):
            record = self._read(path)
            if record is not None:
                return record
        return None


class BinaryBundleFeatureProvider:
    """circuit-tracer's ``index.json.gz`` + ``.bin`` bundle (`docs/graph-json.md` §10.3)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        try:
            raw = gzip.decompress((self.root / "index.json.gz").read_bytes())
            index = parse_json(raw)
        except (OSError, EOFError, zlib.error, UntrustedJsonError) as exc:
            raise CircuitAtlasError(
                f"feature bundle index {self.root / 'index.json.gz'} is unreadable: {exc}"
            ) from exc
        if isinstance(index, list):
            index = {str(i): entry for i, entry in enumerate(index)}
        if not isinstance(index, dict):
            raise CircuitAtlasError(f"feature bundle index in {self.root} must be a list or object")
        self._index: dict[str, Any] = index
        self._lock = threading.Lock()

    def feature(self, layer: int, index: int) -> dict[str, Any] | None:
        entry = self._index.get(str(layer))
        if not isinstance(entry, dict):
            return None
        offsets = entry.get("offsets")
        filename = entry.get("filename")
        if (not isinstance(filename, str) or not isinstance(offsets, list)
                or not 0 <= index < len(offsets) - 1):
            return None
        start = offsets[index]
        if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < 2**62:
            raise FeatureDataError(f"feature bundle index: offset {str(start)[:40]!r} of "
                                   f"{layer}/{index} is not a file position")
        path = (self.root / filename).resolve()
        if not path.is_relative_to(self.root):
            raise FeatureDataError(f"feature bundle entry {filename!r} points outside {self.root}")
        try:
            with self._lock, open(path, "rb") as handle:
                handle.seek(start)
                header = handle.read(4)
                if len(header) < 4:
                    return None
                (length,) = struct.unpack("<I", header)
                if length > MAX_FEATURE_RECORD_BYTES:
                    raise FeatureDataError(f"feature record {layer}/{index} in {path} is too large")
                payload = handle.read(length)
            data = parse_json(zlib.decompress(payload, wbits=47))  # 47: zlib or gzip header
        except (OSError, zlib.error, UntrustedJsonError) as exc:
            raise FeatureDataError(f"feature record {layer}/{index} in {path} is corrupt ({exc})") from exc
        return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class ProviderLabels:
    """A provider's labels of every feature, for labelling graph nodes (`server/labels.py`);
    `scan` names the transcoder set the provider describes (None when it does not say)."""

    labels: Mapping[tuple[int, int], str]
    scan: str | None


NO_LABELS = ProviderLabels({}, None)


def labels_stamp(provider: FeatureProvider | None) -> Hashable | None:
    """Changes whenever the provider's labels do; None when it has no labels to give.

    Only our feature store gives labels in bulk (its `labels.json`). The other layouts keep a
    label inside each feature's record, which the feature panel shows; reading every record to
    label a graph would cost a file read per node.
    """
    if not isinstance(provider, FeatureStore):
        return None
    try:
        stat = (provider.folder / LABELS_FILE).stat()
    except OSError:
        return None
    return (id(provider), stat.st_mtime_ns, stat.st_size)


def read_provider_labels(provider: FeatureProvider | None) -> ProviderLabels:
    """Every label of `provider` with the transcoder set it was built for (see `labels_stamp`)."""
    if not isinstance(provider, FeatureStore):
        return NO_LABELS
    scan = provider.meta.get("transcoders_scan")
    return ProviderLabels(provider.labels(), scan if isinstance(scan, str) else None)


# Tokens a tokenizer adds around text rather than text itself (pad, unk, bos, eos and the like),
# as token strings show them: <pad>, </s>, <|endoftext|>, [CLS], <start_of_turn>, <unused12>.
_SPECIAL_NAMES = (
    r"pad|unk|bos|eos|s|mask|sep|cls|endoftext|begin_of_text|end_of_text|eot_id|eom_id|"
    r"start_of_turn|end_of_turn|im_start|im_end|startoftext|bot|eot|padding|unused\d*|"
    r"reserved_special_token_\d+|fim_(?:prefix|middle|suffix|pad)"
)
_SPECIAL = re.compile(rf"^\s*(?:<\|?\s*/?(?:{_SPECIAL_NAMES})\s*\|?>|\[(?:{_SPECIAL_NAMES})\])\s*$",
                      re.IGNORECASE)


def is_special_token(text: Any) -> bool:
    """Whether a token string is a tokenizer's special token rather than text."""
    return isinstance(text, str) and bool(_SPECIAL.match(text))


def without_special_tokens(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """A feature record whose promoted / suppressed token lists leave special tokens out: a
    feature that "promotes <pad>" says nothing about text, and such tokens crowd out real ones."""
    if not isinstance(record, dict):
        return record
    out = dict(record)
    for key in ("top_logits", "bottom_logits"):
        tokens = record.get(key)
        if isinstance(tokens, list):
            out[key] = [t for t in tokens if not is_special_token(t)]
    return out


def load_feature_provider(path: str | Path) -> FeatureProvider:
    """Open the feature store at ``path``, whichever of the supported layouts it uses.

    Order: our dashboards store (a `FeatureStore`, which is a provider itself; a folder that
    holds one but cannot be read is an error, not a silent fallback), then circuit-tracer's
    binary bundle, then a folder of per-feature JSON files.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise CircuitAtlasError(f"--features: {root} is not a folder")
    store = open_feature_store(root)
    if store is not None:
        return store
    if (root / "index.json.gz").is_file():
        return BinaryBundleFeatureProvider(root)
    return JsonDirFeatureProvider(root)
