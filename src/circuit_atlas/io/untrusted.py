"""Reading JSON that anyone may have written: files in a served data folder, request bodies.

Why not plain `json.loads`: it raises `RecursionError` (not a `ValueError`) on a document nested
a few thousand levels deep, `ValueError` with an unrelated message on an integer of more than
4300 digits, and accepts `\\ud800`-style escapes that decode to lone surrogates, strings that
cannot be written back as UTF-8 (every later write or response of them fails). Every reader of
an untrusted file goes through `read_json` / `parse_json`, which turn all of these into one
`UntrustedJsonError` (a `ValueError`, so callers that caught `json.JSONDecodeError` still do),
and replace lone surrogates by U+FFFD so what was read can always be shown and saved.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

# A \uD800-\uDFFF escape in the raw text: only documents holding one can decode to a surrogate
# (valid pairs decode to one code point; unescaped surrogates are not valid UTF-8 input).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF][0-9a-fA-F]{2}")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class UntrustedJsonError(ValueError):
    """A document is not JSON this program can use; the message says why in words."""


def parse_json(raw: str | bytes) -> Any:
    """`json.loads(raw)` with every failure an `UntrustedJsonError`, lone surrogates replaced."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
        value = json.loads(text)
    except RecursionError:
        raise UntrustedJsonError("it is nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise UntrustedJsonError(f"it is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except ValueError as exc:  # JSONDecodeError, and integers past Python's digit limit
        raise UntrustedJsonError(str(exc)) from None
    if _SURROGATE_ESCAPE.search(text):
        try:
            value = without_lone_surrogates(value)
        except RecursionError:
            raise UntrustedJsonError("it is nested too deeply") from None
    return value


def read_json(path: str | Path, *, max_bytes: int | None = None) -> Any:
    """Parse the JSON file at `path` (OSError when it cannot be read, `UntrustedJsonError` when
    it is larger than `max_bytes` or not usable JSON)."""
    path = Path(path)
    with open(path, "rb") as handle:
        raw = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
    if max_bytes is not None and len(raw) > max_bytes:
        raise UntrustedJsonError(f"it is larger than {max_bytes:,} bytes")
    return parse_json(raw)


def printable(text: str) -> str:
    """`text` with lone surrogates (undecodable bytes of a file name, bad escapes) as U+FFFD."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def has_lone_surrogate(text: str) -> bool:
    """Whether `text` cannot be encoded as UTF-8."""
    return _LONE_SURROGATE.search(text) is not None


def without_lone_surrogates(value: Any) -> Any:
    """A JSON value with `printable` applied to every string, keys included."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, list):
        return [without_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {printable(key): without_lone_surrogates(item) for key, item in value.items()}
    return value


def json_safe(value: Any) -> Any:
    """A value that strict JSON and UTF-8 can carry: NaN and infinities become None (strict
    JSON has no such numbers), lone surrogates U+FFFD; tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable(str(key)): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value
