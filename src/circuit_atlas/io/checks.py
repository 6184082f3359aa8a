"""Checks shared by every writer and reader of graphs: slugs and pruning thresholds.

One definition each, so the exporter, the bundle writer, the explorer and the CLI accept exactly
the same values (they used to differ: export accepted slugs the bundle writer refused).
"""

from __future__ import annotations

import re

from circuit_atlas.errors import AttributionError, GraphFileError

MAX_SLUG_LENGTH = 128
# Matched with `fullmatch`: `$` alone would let a trailing newline through.
SLUG_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,%d}" % (MAX_SLUG_LENGTH - 1))


def check_slug(slug: str) -> str:
    """A graph's slug names files (`<slug>.json`, `<slug>/`) and appears in URLs, so it is
    1-128 letters, digits, `.`, `_` or `-`, starts with a letter or digit, and does not end in
    `.json` (a bundle folder named `x.json` would pass for a graph file)."""
    if not isinstance(slug, str) or not SLUG_PATTERN.fullmatch(slug) or slug.endswith(".json"):
        raise GraphFileError(
            f"slug {str(slug)[:80]!r} is not valid: use 1-{MAX_SLUG_LENGTH} letters, digits, '.', '_' or "
            "'-', starting with a letter or digit and not ending in '.json'"
        )
    return slug


def check_threshold(value: float, name: str) -> float:
    """A pruning threshold is a share of the total influence, so it lies in [0, 1] (NaN is
    refused too); `name` is the argument or flag to name in the message."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AttributionError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= number <= 1.0:  # also false for NaN
        raise AttributionError(f"{name} must lie in [0, 1], got {value!r}")
    return number
