"""Running statistics of every feature of one layer, updated batch by batch.

Per feature it keeps: the number of positive and of negative activations, the sum of positive
activations in fixed point (integer, so the total is exact and independent of batch order), the
log-bin histogram (`histogram.py`), the top-k *windows* by their maximum activation, with
distinct contexts, and a bottom-k sample of all active occurrences by hash key (`keys.py`).

Distinct contexts: a window enters the top list through the context around its maximum (the
tokens a dashboard shows, `keys.context_hashes`); when a context is already in the list, only the
better of the two occurrences stays. So the list is the top k of {best occurrence of each distinct
context}: a corpus that repeats a sentence many times shows it once, next to other contexts,
instead of k copies of it.

Every piece is merge-order independent: counts are integers; the top list is ordered by
(activation desc, occurrence id asc) and the sample by (key asc, occurrence id asc), which are
total orders on occurrences, so the kept set is a function of the occurrences seen, not of how
they were batched or split into shards (`merge.py` merges shards by the same orders). For the
top list with distinct contexts: an occurrence pushed out of the list had k better distinct
contexts above it, which stay above it, so a context never needs to come back with a worse
occurrence. Occurrence ids grow in corpus order, so "earlier occurrence first" is obtained with
stable sorts of [kept entries, new candidates] without comparing ids.

`update` returns the example rows to insert (new entries, with their context: token ids and this
feature's activation on each) and to delete (entries pushed out); the builder writes both in the
open transaction, so the database always matches the in-memory lists at each commit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from circuit_atlas.features.histogram import bin_index
from circuit_atlas.features.keys import EMPTY_KEY, EMPTY_OID, context_hashes, sample_keys, stored_context_hashes

KIND_TOP = 0
KIND_SAMPLE = 1
FIXED_POINT_BITS = 20  # sums are kept as round(a * 2**20): 1e-6 resolution, exact addition


@dataclass
class ExampleRows:
    """New example entries of one kind; contexts are `tokens[i, starts[i]:stops[i]]`."""

    kind: int
    features: np.ndarray
    oids: np.ndarray
    activations: np.ndarray
    keys: np.ndarray
    tokens: np.ndarray
    acts: np.ndarray
    starts: np.ndarray
    stops: np.ndarray
    focus: np.ndarray

    def __len__(self) -> int:
        return len(self.features)


@dataclass
class RemovedRows:
    """Example entries of one kind that left their list."""

    kind: int
    features: np.ndarray
    oids: np.ndarray

    def __len__(self) -> int:
        return len(self.features)


@dataclass
class StatsRows:
    """Counts of some features (`histograms` is `[n, n_bins]`)."""

    features: np.ndarray
    n_active: np.ndarray
    n_negative: np.ndarray
    sum_fixed: np.ndarray
    histograms: np.ndarray


@dataclass(frozen=True)
class _Batch:
    """The batch being added, as `update` received it: activations `[B, P, F]`, token ids
    `[B, P]` and the number of real tokens of each window. Kept together because every step that
    cuts example contexts out of a batch needs all three, and passing them as one value keeps the
    argument lists short and the three from being swapped."""

    acts: torch.Tensor
    tokens: torch.Tensor
    lengths: torch.Tensor


@dataclass(frozen=True)
class _Entering:
    """Examples entering one kind of list (top or sample), one per element of each tensor: the
    window and position of the batch they come from, the feature, its activation there, the
    occurrence id and the sampling key (zero for the top list). Grouped so that the two list
    updates hand their winners to `_rows` as one value instead of seven positional tensors that
    could be passed in the wrong order without any error."""

    kind: int
    window: torch.Tensor
    position: torch.Tensor
    feature: torch.Tensor
    value: torch.Tensor
    oid: torch.Tensor
    key: torch.Tensor


class LayerAccumulator:
    """Statistics of the `n_features` features of `layer` (tensors live on `device`)."""

    def __init__(self, layer: int, n_features: int, *, top_k: int, n_samples: int, seed: int,
                 edges: np.ndarray, before: int, after: int, device: torch.device,
                 track_negative: bool = True) -> None:
        self.layer, self.n_features = layer, n_features
        self.top_k, self.n_samples, self.seed = top_k, n_samples, seed
        self.before, self.after = before, after
        self.device, self.track_negative = device, track_negative
        self.edges = torch.as_tensor(edges, dtype=torch.float32, device=device)
        self.n_bins = len(edges) + 1
        F = n_features
        self.n_active = torch.zeros(F, dtype=torch.long, device=device)
        self.n_negative = torch.zeros(F, dtype=torch.long, device=device)
        self.sum_fixed = torch.zeros(F, dtype=torch.long, device=device)
        self.histograms = torch.zeros(F, self.n_bins, dtype=torch.long, device=device)
        self.top_val = torch.full((F, top_k), -torch.inf, dtype=torch.float32, device=device)
        self.top_oid = torch.full((F, top_k), EMPTY_OID, dtype=torch.long, device=device)
        self.top_context = torch.zeros((F, top_k), dtype=torch.long, device=device)
        self.sample_key = torch.full((F, n_samples), EMPTY_KEY, dtype=torch.long, device=device)
        self.sample_oid = torch.full((F, n_samples), EMPTY_OID, dtype=torch.long, device=device)
        self.dirty = torch.zeros(F, dtype=torch.bool, device=device)

    # ------------------------------------------------------------------ batch update
    @torch.no_grad()
    def update(self, acts: torch.Tensor, tokens: torch.Tensor, oids: torch.Tensor,
               lengths: torch.Tensor) -> tuple[list[ExampleRows], list[RemovedRows]]:
        """Add one batch: `acts` `[B, P, F]` float32, zero wherever statistics are not taken."""
        B, P, F = acts.shape
        flat = acts.reshape(B * P, F)
        if self.track_negative:  # skipped when the activation function cannot go negative
            negative = (flat < 0).sum(0)
            self.n_negative += negative
            self.dirty |= negative > 0
        rows, cols = (flat > 0).nonzero(as_tuple=True)  # row-major: occurrence order per feature
        values = flat[rows, cols]
        self._add_counts(cols, values)
        added, removed = [], []
        batch = _Batch(acts, tokens, lengths)
        top = self._update_top(batch, oids)
        sample = self._update_samples(batch, oids.reshape(-1), rows, cols, values)
        for new, gone in (top, sample):
            added.append(new)
            removed.append(gone)
        return added, removed

    def _add_counts(self, cols: torch.Tensor, values: torch.Tensor) -> None:
        self.n_active += torch.bincount(cols, minlength=self.n_features)
        fixed = torch.round(values.double() * (1 << FIXED_POINT_BITS)).long()
        self.sum_fixed.index_add_(0, cols, fixed)
        bins = bin_index(values, self.edges)
        ones = torch.ones_like(bins)
        self.histograms.view(-1).index_add_(0, cols * self.n_bins + bins, ones)
        self.dirty[cols] = True

    def _update_top(self, batch: _Batch, oids: torch.Tensor) -> tuple[ExampleRows, RemovedRows]:
        best, where = batch.acts.max(dim=1)  # [B, F]; the first position on ties
        # only windows above a feature's current k-th value can enter (equal values lose: older)
        floor = torch.clamp(self.top_val[:, -1], min=0.0)
        touched = (best > floor[None]).any(0).nonzero().squeeze(1)
        k = self.top_k
        cand_val = best[:, touched].T  # [U, B], windows in corpus order
        cand_val = torch.where(cand_val > 0, cand_val, torch.full_like(cand_val, -torch.inf))
        cand_pos = where[:, touched].T
        cand_oid = oids.gather(1, where[:, touched]).T
        contexts = self.window_contexts(batch.tokens, batch.lengths)  # [B, P]
        cand_ctx = contexts.gather(1, where[:, touched]).T
        old_val, old_oid = self.top_val[touched], self.top_oid[touched]
        merged_val = torch.cat([old_val, cand_val], 1)
        merged_ctx = torch.cat([self.top_context[touched], cand_ctx], 1)
        order, valid = _distinct_top(merged_val, merged_ctx, k)
        new_val = torch.where(valid, merged_val.gather(1, order), torch.full_like(order, -torch.inf,
                                                                                   dtype=torch.float32))
        new_oid = torch.where(valid, torch.cat([old_oid, cand_oid], 1).gather(1, order),
                              torch.full_like(order, EMPTY_OID))
        new_ctx = torch.where(valid, merged_ctx.gather(1, order), torch.zeros_like(order))
        self.top_val[touched], self.top_oid[touched], self.top_context[touched] = new_val, new_oid, new_ctx
        from_old = valid & (order < k)
        kept_old = torch.zeros(old_oid.shape[0], k + 1, dtype=torch.bool, device=order.device)
        kept_old.scatter_(1, torch.where(from_old, order, k), True)  # column k catches the rest
        gone = (old_val > -torch.inf) & ~kept_old[:, :k]
        row, slot = gone.nonzero(as_tuple=True)
        removed = RemovedRows(KIND_TOP, touched[row].cpu().numpy(), old_oid[row, slot].cpu().numpy())
        row, slot = (valid & (order >= k)).nonzero(as_tuple=True)
        window = order[row, slot] - k
        feature = touched[row]
        entering = _Entering(KIND_TOP, window, cand_pos[row, window], feature, new_val[row, slot],
                             new_oid[row, slot], torch.zeros_like(feature))
        return self._rows(batch, entering), removed

    def window_contexts(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """int64 `[B, P]`: the context hash of every position of every window of a batch."""
        B, P = tokens.shape
        offsets = torch.arange(self.before + self.after + 1, device=tokens.device) - self.before
        index = torch.arange(P, device=tokens.device)[:, None] + offsets[None]  # [P, W]
        inside = (index >= 0)[None] & (index[None] < lengths.to(tokens.device)[:, None, None])
        gathered = tokens[:, index.clamp(0, P - 1)]  # [B, P, W]
        padded = torch.where(inside, gathered, torch.full_like(gathered, -1))
        return context_hashes(padded.reshape(B * P, -1)).reshape(B, P)

    def _update_samples(self, batch: _Batch, flat_oids: torch.Tensor, rows: torch.Tensor,
                        cols: torch.Tensor, values: torch.Tensor) -> tuple[ExampleRows, RemovedRows]:
        R, P = self.n_samples, batch.acts.shape[1]
        keys = sample_keys(self.seed, flat_oids)[rows]
        # only keys below a feature's current R-th key can enter (equal keys lose: older oids)
        entering = keys < self.sample_key[cols, -1]
        cols, rows, values, keys = cols[entering], rows[entering], values[entering], keys[entering]
        cand_oid = flat_oids[rows]
        # sort by (feature, key), ties in occurrence order (the nonzero order), keep R per feature
        by_key = torch.argsort(keys, stable=True)
        order = by_key[torch.argsort(cols[by_key], stable=True)]
        cols, keys, rows, values, cand_oid = (t[order] for t in (cols, keys, rows, values, cand_oid))
        touched, counts = torch.unique_consecutive(cols, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        group = torch.repeat_interleave(torch.arange(len(touched), device=cols.device), counts)
        rank = torch.arange(len(cols), device=cols.device) - starts[group]
        keep = rank < R
        group, rank = group[keep], rank[keep]
        new_key = torch.full((len(touched), R), EMPTY_KEY, dtype=torch.long, device=cols.device)
        new_oid = torch.full_like(new_key, EMPTY_OID)
        new_key[group, rank], new_oid[group, rank] = keys[keep], cand_oid[keep]
        cand_flat = torch.full_like(new_key, -1)
        cand_flat[group, rank] = rows[keep]
        cand_value = torch.zeros(new_key.shape, dtype=torch.float32, device=cols.device)
        cand_value[group, rank] = values[keep]

        old_key, old_oid = self.sample_key[touched], self.sample_oid[touched]
        merged_key = torch.cat([old_key, new_key], 1)
        order = torch.argsort(merged_key, dim=1, stable=True)[:, :R]
        kept_key = merged_key.gather(1, order)
        kept_oid = torch.cat([old_oid, new_oid], 1).gather(1, order)
        self.sample_key[touched], self.sample_oid[touched] = kept_key, kept_oid
        removed = self._pushed_out(KIND_SAMPLE, touched, order < R, old_key != EMPTY_KEY, old_oid)
        row, slot = ((order >= R) & (kept_key != EMPTY_KEY)).nonzero(as_tuple=True)
        column = order[row, slot] - R
        flat_index = cand_flat[row, column]
        entering = _Entering(KIND_SAMPLE, flat_index // P, flat_index % P, touched[row],
                             cand_value[row, column], kept_oid[row, slot], kept_key[row, slot])
        return self._rows(batch, entering), removed

    @staticmethod
    def _pushed_out(kind: int, touched, from_old, old_valid, old_oid) -> RemovedRows:
        """Old entries beyond the kept prefix (kept old entries are a prefix: both lists sorted)."""
        kept = from_old.sum(1, keepdim=True)
        slots = torch.arange(old_oid.shape[1], device=old_oid.device)[None]
        gone = (slots >= kept) & old_valid
        row, slot = gone.nonzero(as_tuple=True)
        return RemovedRows(kind, touched[row].cpu().numpy(), old_oid[row, slot].cpu().numpy())

    def _rows(self, batch: _Batch, entering: _Entering) -> ExampleRows:
        """Example rows with contexts `[position - before, position + after]` clipped to the window."""
        acts, window, position, feature = batch.acts, entering.window, entering.position, entering.feature
        width = self.before + self.after + 1
        offsets = torch.arange(width, device=acts.device) - self.before
        index = position[:, None] + offsets[None]
        length = batch.lengths.to(acts.device)[window]
        inside = (index >= 0) & (index < length[:, None])
        clamped = index.clamp(0, acts.shape[1] - 1)
        ctx_tokens = batch.tokens.to(acts.device)[window[:, None], clamped]
        ctx_acts = acts[window[:, None], clamped, feature[:, None]] * inside
        starts = (self.before - position).clamp(min=0)
        stops = starts + inside.sum(1)
        return ExampleRows(
            kind=entering.kind,
            features=feature.cpu().numpy(),
            oids=entering.oid.cpu().numpy(),
            activations=entering.value.float().cpu().numpy(),
            keys=entering.key.cpu().numpy(),
            tokens=ctx_tokens.to(torch.int32).cpu().numpy(),
            acts=ctx_acts.float().cpu().numpy(),
            starts=starts.cpu().numpy(),
            stops=stops.cpu().numpy(),
            focus=(position - (position - self.before).clamp(min=0)).cpu().numpy(),
        )

    # ------------------------------------------------------------------ persistence
    def take_dirty(self) -> StatsRows:
        """Counts of the features changed since the last call (then marks them clean)."""
        features = self.dirty.nonzero().squeeze(1)
        self.dirty[features] = False
        return StatsRows(
            features=features.cpu().numpy(),
            n_active=self.n_active[features].cpu().numpy(),
            n_negative=self.n_negative[features].cpu().numpy(),
            sum_fixed=self.sum_fixed[features].cpu().numpy(),
            histograms=self.histograms[features].cpu().numpy(),
        )

    def load(self, stats: StatsRows, tops: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
             samples: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        """Restore the state a build committed: stats rows, (feature, activation, oid, context
        hash) of the top lists and (feature, key, oid) of the samples."""
        dev = self.device
        features = torch.as_tensor(stats.features, dtype=torch.long, device=dev)
        self.n_active[features] = torch.as_tensor(stats.n_active, device=dev)
        self.n_negative[features] = torch.as_tensor(stats.n_negative, device=dev)
        self.sum_fixed[features] = torch.as_tensor(stats.sum_fixed, device=dev)
        self.histograms[features] = torch.as_tensor(stats.histograms, device=dev)
        feature, value, oid, context = tops
        order = np.lexsort((oid, -value.astype(np.float64), feature))
        self._fill(self.top_val, self.top_oid, feature[order], value[order], oid[order],
                   self.top_context, context[order])
        feature, key, oid = samples
        order = np.lexsort((oid, key, feature))
        self._fill(self.sample_key, self.sample_oid, feature[order], key[order], oid[order])
        self.dirty.zero_()

    def stored_contexts(self, focus: np.ndarray, tokens: list[bytes]) -> np.ndarray:
        """Context hashes of stored example rows, as `window_contexts` computed them."""
        return stored_context_hashes(focus, tokens, self.before, self.after)

    def _fill(self, values_t, oids_t, feature, value, oid, extra_t=None, extra=None) -> None:
        if len(feature) == 0:
            return
        starts = np.r_[0, np.flatnonzero(np.diff(feature)) + 1]
        counts = np.diff(np.r_[starts, len(feature)])
        rank = np.arange(len(feature)) - np.repeat(starts, counts)
        if rank.max() >= values_t.shape[1]:
            raise ValueError("stored example lists are longer than the build's settings allow")
        f = torch.as_tensor(feature, dtype=torch.long, device=self.device)
        r = torch.as_tensor(rank, dtype=torch.long, device=self.device)
        values_t[f, r] = torch.as_tensor(value, device=self.device).to(values_t.dtype)
        oids_t[f, r] = torch.as_tensor(oid, dtype=torch.long, device=self.device)
        if extra_t is not None:
            extra_t[f, r] = torch.as_tensor(extra, dtype=torch.long, device=self.device)


def _distinct_top(values: torch.Tensor, contexts: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of `values` `[U, M]` (entries in (activation desc, then column) tie order: kept
    entries first, then candidates in corpus order): the columns of the best `k` entries with
    distinct `contexts`, and whether each of those is a real entry (`[U, k]` each).

    An entry is dropped when an entry of the same context ranks above it. Entries of value -inf
    are empty slots and never count as a context.
    """
    ranked = torch.argsort(-values, dim=1, stable=True)
    ranked_ctx = contexts.gather(1, ranked)
    real = values.gather(1, ranked) > -torch.inf
    # group equal contexts (stable: the best-ranked entry of a context comes first in its group)
    by_ctx = torch.argsort(ranked_ctx, dim=1, stable=True)
    grouped = ranked_ctx.gather(1, by_ctx)
    repeat = torch.zeros_like(real)
    repeat[:, 1:] = grouped[:, 1:] == grouped[:, :-1]
    # empty slots rank last, so a real entry never repeats an empty one's context
    duplicate = torch.zeros_like(real).scatter_(1, by_ctx, repeat) & real
    keep_first = torch.argsort(duplicate.to(torch.int8), dim=1, stable=True)[:, :k]
    order = ranked.gather(1, keep_first)
    valid = (real & ~duplicate).gather(1, keep_first)
    return order, valid
