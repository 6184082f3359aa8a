"""Identities of token occurrences and the deterministic sampling key of each.

Why a key per occurrence instead of a reservoir with a random generator: the sample of a feature
must not depend on batch size, on where a run was interrupted, or on the order partial results
are merged. Keeping, for each feature, the occurrences with the *smallest hash keys* ("bottom-k"
sampling) has that property: the result is a pure function of the set of occurrences seen, and
because the hash is (close to) uniformly distributed and independent of the activation, it is a
uniform random sample without replacement of the feature's active occurrences.

Occurrence id (`oid`, int64): `doc << 32 | window << 12 | position`, where `doc` is the document
index in the corpus, `window` the index of the context window inside the document and `position`
the index inside that window. Ids increase in corpus order, which the accumulators use to break
ties (earlier occurrence first) without extra sort keys.

Key (62 bits, int64): two independent 31-bit halves. Each half mixes a hash of
`(seed, layer, feature)` with a hash of the occurrence id (multiply-xorshift rounds), so the
builder hashes each feature and each occurrence once and combines them with one round per active
(occurrence, feature) pair. Every product is of two numbers below 2**31, so int64 arithmetic never
overflows (same results on CPU and GPU).
"""

from __future__ import annotations

import torch

DOC_BITS = 31
WINDOW_BITS = 20
POSITION_BITS = 12
MAX_DOCUMENTS = 1 << DOC_BITS
MAX_WINDOWS_PER_DOCUMENT = 1 << WINDOW_BITS
MAX_CONTEXT_LEN = 1 << POSITION_BITS

EMPTY_KEY = (1 << 63) - 1  # sorts after every real key
EMPTY_OID = -1

_MASK31 = (1 << 31) - 1
_MUL1 = 0x2C1B3C6D
_MUL2 = 0x297A2D39


def occurrence_id(doc: int, window: int, position: int) -> int:
    """The int64 id of one token occurrence (see module docstring)."""
    return (doc << 32) | (window << POSITION_BITS) | position


def split_occurrence(oid: int) -> tuple[int, int, int]:
    """(document, window, position) of an occurrence id."""
    return oid >> 32, (oid >> POSITION_BITS) & (MAX_WINDOWS_PER_DOCUMENT - 1), oid & (MAX_CONTEXT_LEN - 1)


def _mix(h: torch.Tensor, v: torch.Tensor | int) -> torch.Tensor:
    h = ((h ^ v) * _MUL1) & _MASK31
    h = h ^ (h >> 15)
    h = (h * _MUL2) & _MASK31
    return h ^ (h >> 13)


def feature_hashes(seed: int, layer: int, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two 31-bit feature halves of the keys of `features` of `layer`."""
    features = features.to(torch.int64)
    out = []
    for salt in (1, 2):
        h = torch.full_like(features, (2 * seed + salt) & _MASK31)
        out.append(_mix(_mix(h, layer & _MASK31), features & _MASK31))
    return out[0], out[1]


def occurrence_hashes(seed: int, oids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two 31-bit occurrence halves of the keys of `oids`."""
    oids = oids.to(torch.int64)
    out = []
    for salt in (3, 4):
        h = torch.full_like(oids, (2 * seed + salt) & _MASK31)
        for part in (oids & _MASK31, (oids >> 31) & _MASK31, oids >> 62):
            h = _mix(h, part)
        out.append(h)
    return out[0], out[1]


def combine(feature_halves: tuple[torch.Tensor, torch.Tensor],
            occurrence_halves: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """62-bit keys from matching (broadcastable) feature and occurrence halves."""
    high = _mix(feature_halves[0], occurrence_halves[0])
    low = _mix(feature_halves[1], occurrence_halves[1])
    return (high << 31) | low


def sample_keys(seed: int, layer: int, features: torch.Tensor, oids: torch.Tensor) -> torch.Tensor:
    """62-bit sampling keys (int64) for occurrences `oids` of `features` (same shape) at `layer`."""
    return combine(feature_hashes(seed, layer, features), occurrence_hashes(seed, oids))
