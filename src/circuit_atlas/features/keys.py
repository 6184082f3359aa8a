"""Identities of token occurrences, the sampling key of each, and hashes of example contexts.

Why a key per occurrence instead of a reservoir with a random generator: the sample of a feature
must not depend on batch size, on where a run was interrupted, or on the order partial results
are merged (several ranks build shards of one store). Keeping, for each feature, the occurrences
with the *smallest hash keys* ("bottom-k" sampling) has that property: the result is a pure
function of the set of occurrences seen, and because the hash is (close to) uniformly distributed
and independent of the activation, it is a uniform random sample without replacement of the
feature's active occurrences.

The key depends on the occurrence (and the build's seed) only, not on the feature: every
feature's sample is then a bottom-k sketch of its set of active occurrences under *one* hash, and
two such sketches estimate how much the two sets overlap (`coactivation.py`: the Jaccard index of
the tokens two features fire on, from the stored samples alone). Stores built before this rule
mixed a per-feature hash into the key; their meta lacks `builder.sample_keys`.

Occurrence id (`oid`, int64): `doc << 32 | window << 12 | position`, where `doc` is the document
index in the corpus, `window` the index of the context window inside the document and `position`
the index inside that window. Ids increase in corpus order, which the accumulators use to break
ties (earlier occurrence first) without extra sort keys.

Key (62 bits, int64): two independent 31-bit halves, each a few multiply-xorshift rounds over the
seed and the three 31-bit parts of the occurrence id. Every product is of two numbers below 2**31,
so int64 arithmetic never overflows (same results on CPU and GPU).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
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


def context_hashes(padded: torch.Tensor) -> torch.Tensor:
    """62-bit hashes (int64) of example contexts, one per row of `padded` `[N, W]`.

    A row is the `W = before + 1 + after` token ids around a focal token, with -1 where the
    context runs past the window's edge; the focal token is always column `before`, so equal rows
    mean the same tokens with the same focus, i.e. the same context as a dashboard shows it
    (`accumulator.py` keeps the top examples of a feature distinct by this hash).
    """
    padded = padded.to(torch.int64) + 1  # the -1 sentinel becomes 0; token ids stay below 2**31
    out = []
    for salt in (5, 6):
        h = torch.full(padded.shape[:1], salt, dtype=torch.int64, device=padded.device)
        for column in range(padded.shape[1]):
            h = _mix(h, padded[:, column] & _MASK31)
        out.append(h)
    return (out[0] << 31) | out[1]


def stored_context_hashes(focus: Sequence[int], tokens: Sequence[bytes], before: int,
                          after: int) -> np.ndarray:
    """`context_hashes` of stored example rows: the focal index and the int32 token blob of each
    (the context clipped to its window), padded back to `before + 1 + after` columns."""
    padded = np.full((len(tokens), before + after + 1), -1, dtype=np.int64)
    for row, (f, blob) in enumerate(zip(focus, tokens)):
        ids = np.frombuffer(blob, dtype="<i4")
        padded[row, before - int(f):before - int(f) + len(ids)] = ids
    return context_hashes(torch.from_numpy(padded)).numpy()


def sample_keys(seed: int, oids: torch.Tensor) -> torch.Tensor:
    """62-bit sampling keys (int64) of occurrences `oids` (any shape)."""
    high, low = occurrence_hashes(seed, oids)
    return (high << 31) | low
