"""Cantor pairing: how graph files (`docs/graph-json.md` §6) pack (layer, feature) into one
integer, the node's `feature` value and the name of per-feature files."""

from __future__ import annotations

import math


def cantor_pair(layer: int, feature: int) -> int:
    """`(l + f)(l + f + 1)/2 + f`: the schema_version 1 `feature` value of a feature node."""
    total = layer + feature
    return total * (total + 1) // 2 + feature


def cantor_unpair(value: int) -> tuple[int, int]:
    """Inverse of `cantor_pair`: `(layer, feature)`, in exact integer arithmetic."""
    w = (math.isqrt(8 * value + 1) - 1) // 2
    feature = value - w * (w + 1) // 2
    return w - feature, feature
