"""Response bodies that cannot fail to encode.

Strict JSON has no NaN or infinity, and UTF-8 has no lone surrogates (which file names with
undecodable bytes and ``\\ud800`` escapes produce). Data that reaches a response is cleaned where
it is read (`io.untrusted`), but one stray value must still not turn a good answer into a 500:
lone surrogates are written as ``\\uXXXX`` escapes, which are valid JSON.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse


def json_bytes(content: Any) -> bytes:
    """Compact strict JSON as UTF-8 (NaN and infinities raise ValueError: they are bugs)."""
    text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.encode("utf-8", errors="backslashreplace")


class SafeJSONResponse(JSONResponse):
    """`JSONResponse` rendered with `json_bytes`."""

    def render(self, content: Any) -> bytes:
        return json_bytes(content)
