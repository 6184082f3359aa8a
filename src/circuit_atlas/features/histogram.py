"""Fixed log-spaced activation histograms, and the quantile groups and percentiles read off them.

Why fixed edges chosen up front: counts in fixed bins are plain integers, so they add up to the
same totals whatever the batch size, the interruption points or the merge order, and a resumed
build equals an uninterrupted one bit for bit. Edges that adapt to the data (equal-width bins over
[0, max], as some dashboards draw) would need the maximum before the first batch. Activations of
transcoder features span many orders of magnitude across features, so the bins are log-spaced:
`BINS_PER_DECADE` per decade from 1e-4 to 1e4 (each bin about 15% wide), plus an underflow bin
(0, 1e-4) and an overflow bin [1e4, inf). Only positive activations are binned.

Bin `i` holds activations `a` with `edges[i-1] <= a < edges[i]` (`edges[-1]` = 0 for the
underflow bin and `edges[len]` = inf for the overflow bin), which is `torch.bucketize(a, edges,
right=True)`.

Quantile groups (the "examples across activation quantiles") are unions of whole bins, so their
boundaries are exact bin edges and the number of activations in each group is an exact count; the
price is that a boundary sits at the bin edge nearest above the nominal quantile. Percentiles for
the frontend (`quantile_values`) and equal-width bars (`histogram`) are interpolated from the bins
and are therefore approximate (to within one bin).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

DECADE_LOW = -4
DECADE_HIGH = 4
BINS_PER_DECADE = 16


def default_edges() -> np.ndarray:
    """The inner bin edges (float32, ascending): 10**(k / BINS_PER_DECADE) for the decade range."""
    steps = np.arange(DECADE_LOW * BINS_PER_DECADE, DECADE_HIGH * BINS_PER_DECADE + 1)
    return (10.0 ** (steps / BINS_PER_DECADE)).astype(np.float32)


def n_bins(edges: np.ndarray) -> int:
    """Number of bins for `edges`: one between each pair, plus underflow and overflow."""
    return len(edges) + 1


def bin_index(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Bin of each (positive, float32) activation; `edges` is a float32 tensor on the same device."""
    return torch.bucketize(values, edges, right=True)


def bin_bounds(edges: np.ndarray, index: int) -> tuple[float, float]:
    """[lower, upper) of bin `index` (lower 0 for the underflow bin, upper inf for the overflow)."""
    lower = 0.0 if index == 0 else float(edges[index - 1])
    upper = math.inf if index == len(edges) else float(edges[index])
    return lower, upper


@dataclass(frozen=True)
class QuantileGroup:
    """Activations in `[lower, upper)`: bins `first_bin..last_bin`, holding `count` activations,
    which are the ones ranked (ascending) from `start_fraction` to `end_fraction` of the total."""

    lower: float
    upper: float
    first_bin: int
    last_bin: int
    count: int
    start_fraction: float
    end_fraction: float

    def contains(self, value: float) -> bool:
        return self.lower <= value < self.upper


def quantile_groups(counts: np.ndarray, edges: np.ndarray, n_groups: int) -> list[QuantileGroup]:
    """Split the binned activations into (at most) `n_groups` groups of about equal count.

    Group g ends at the first bin where the cumulative count reaches ceil(g·n / n_groups); groups
    that would be empty (several nominal quantiles inside one bin) are merged away. Ascending order.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0 or n_groups < 1:
        return []
    cumulative = np.cumsum(counts)
    ends: list[int] = []
    for g in range(1, n_groups + 1):
        target = -(-g * total // n_groups)  # ceil
        end = int(np.searchsorted(cumulative, target, side="left"))
        if not ends or end > ends[-1]:
            ends.append(end)
    groups, first, before = [], 0, 0
    for last in ends:
        while first <= last and counts[first] == 0:
            first += 1
        count = int(cumulative[last]) - before
        lower, _ = bin_bounds(edges, first)
        _, upper = bin_bounds(edges, last)
        groups.append(QuantileGroup(lower, upper, first, last, count, before / total,
                                    (before + count) / total))
        before += count
        first = last + 1
    return groups


def percentiles(counts: np.ndarray, edges: np.ndarray, max_value: float, n: int = 100) -> list[float]:
    """Approximate values below which 1/n, 2/n, ..., n/n of the activations lie (ascending).

    Within a bin the activations are taken as spread evenly on a log scale (linearly in the
    underflow bin); the overflow bin and the top percentile end at the exact `max_value`.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return []
    cumulative = np.cumsum(counts)
    values = []
    for q in range(1, n + 1):
        target = q * total / n
        index = int(np.searchsorted(cumulative, target, side="left"))
        index = min(index, len(counts) - 1)
        lower, upper = bin_bounds(edges, index)
        upper = min(upper, max_value)
        lower = min(lower, upper)
        below = int(cumulative[index - 1]) if index > 0 else 0
        share = (target - below) / max(int(counts[index]), 1)
        if lower > 0:
            value = lower * (upper / lower) ** share
        else:
            value = upper * share
        values.append(float(min(value, max_value)))
    values[-1] = float(max_value)
    return values


def equal_width_histogram(counts: np.ndarray, edges: np.ndarray, max_value: float,
                          n_out: int = 32) -> list[float]:
    """Approximate bar heights for `n_out` equal-width bins over [0, max_value] (frontend format).

    Each log bin's count is spread over its (clipped) width in proportion to the overlap.
    """
    counts = np.asarray(counts, dtype=np.int64)
    bars = np.zeros(n_out, dtype=np.float64)
    if max_value <= 0 or counts.sum() == 0:
        return bars.tolist()
    width = max_value / n_out
    for index in np.nonzero(counts)[0]:
        lower, upper = bin_bounds(edges, int(index))
        upper = min(upper, max_value)
        lower = min(lower, upper)
        if upper <= lower:  # the whole bin sits at max_value
            bars[-1] += counts[index]
            continue
        first = min(int(lower / width), n_out - 1)
        last = min(int(upper / width), n_out - 1)
        for bar in range(first, last + 1):
            overlap = min(upper, (bar + 1) * width) - max(lower, bar * width)
            if overlap > 0:
                bars[bar] += counts[index] * overlap / (upper - lower)
    return bars.tolist()
