"""Per-feature JumpReLU thresholds that reproduce a trained BatchTopK stack.

BatchTopK keeps, per layer, the k·N largest pre-activations of a batch of N tokens: its cut-off
moves from batch to batch, and a transcoder file needs a fixed rule. A single threshold per layer
(the mean cut-off) already matches the mean L0, but features differ: one that fires on
a few strong tokens is hurt by a threshold tuned on many weak ones. So each feature f gets its
own θ_f, chosen on calibration batches to make `h > θ_f` agree with BatchTopK's choices.

Disagreements are weighted by h²: a token BatchTopK kept but the JumpReLU drops (or the reverse)
changes the reconstruction by h·W_dec[f], whose squared size is h²·‖W_dec[f]‖², and the decoder
norm is the same for every token of the feature. So θ_f minimises

    Σ_{kept, h ≤ θ} h²  +  Σ_{not kept, h > θ} h²

over the calibration tokens, an exact 1-D search over the sorted values of each feature. Only
values above a floor (half the first batch's cut-off; cut-offs of equal-sized batches differ far
less) are collected; kept values below it (a batch with a much lower cut-off) count as a constant
cost, so the search stays exact for every θ ≥ floor. Features that never reach the floor
keep the fallback threshold (the running mean cut-off).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


@torch.no_grad()
def fit_feature_thresholds(pre_batches: Iterable[torch.Tensor], k: int,
                           fallback: torch.Tensor) -> torch.Tensor:
    """θ `[L, F]` from pre-activation batches `[N, L, F]` (see module docstring).

    `fallback` `[L]` is used for features with no value above the floor.
    """
    values: list[list[torch.Tensor]] = []
    kept: list[list[torch.Tensor]] = []
    features: list[list[torch.Tensor]] = []
    below_kept: torch.Tensor | None = None
    floor: torch.Tensor | None = None
    for pre in pre_batches:
        pre = pre.detach().float()
        n_tokens, n_layers, n_features = pre.shape
        if floor is None:
            values, kept, features = ([[] for _ in range(n_layers)] for _ in range(3))
            below_kept = torch.zeros(n_layers, n_features, dtype=torch.float64)
            floor = torch.full((n_layers,), float("inf"))
        for layer in range(n_layers):
            h = pre[:, layer]
            if not torch.isfinite(floor[layer]):
                floor[layer] = max(0.0, 0.5 * _batch_cutoff(h, k))
            selected = _batch_selection(h, k)
            low = selected & (h <= floor[layer])
            below_kept[layer] += (h.pow(2) * low).sum(0).double().cpu()
            candidate = h > floor[layer]
            rows, cols = candidate.nonzero(as_tuple=True)
            values[layer].append(h[rows, cols].cpu())
            kept[layer].append(selected[rows, cols].cpu())
            features[layer].append(cols.cpu())
    if floor is None:
        raise ValueError("fit_feature_thresholds needs at least one batch")
    rows = [_fit_layer(torch.cat(values[layer]), torch.cat(kept[layer]),
                       torch.cat(features[layer]), float(floor[layer]), fallback[layer].item(),
                       below_kept.shape[1]) for layer in range(len(values))]
    return torch.stack(rows)


def _batch_selection(h: torch.Tensor, k: int) -> torch.Tensor:
    """Which entries of one layer's `[N, F]` BatchTopK keeps (as `activations.batch_topk`)."""
    flat = torch.relu(h).reshape(-1)
    keep = min(k * h.shape[0], flat.numel())
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[flat.topk(keep).indices] = True
    return (mask & (flat > 0)).reshape(h.shape)


def _batch_cutoff(h: torch.Tensor, k: int) -> float:
    flat = torch.relu(h).reshape(-1)
    keep = min(k * h.shape[0], flat.numel())
    return float(flat.topk(keep).values[-1])


def _fit_layer(values: torch.Tensor, kept: torch.Tensor, features: torch.Tensor, floor: float,
               fallback: float, n_features: int) -> torch.Tensor:
    """Exact per-feature search (module docstring) over candidates θ ∈ {floor} ∪ values."""
    theta = torch.full((n_features,), max(fallback, floor))
    if values.numel() == 0:
        return theta
    order = torch.argsort(values, stable=True)
    order = order[torch.argsort(features[order], stable=True)]  # by feature, then by value
    v, s, f = values[order].double(), kept[order], features[order]
    weight = v.pow(2)
    kept_w, dropped_w = weight * s, weight * ~s
    counts = torch.bincount(f, minlength=n_features)
    starts = torch.cumsum(counts, 0) - counts
    # prefix sums restarted at every feature's first entry
    kept_prefix = _segment_cumsum(kept_w, f, starts)
    dropped_prefix = _segment_cumsum(dropped_w, f, starts)
    dropped_total = torch.zeros(n_features, dtype=torch.float64).index_add_(0, f, dropped_w)
    # θ = v_j switches off every entry of the feature up to and including j
    cost = kept_prefix + (dropped_total[f] - dropped_prefix)
    best_cost = torch.full((n_features,), float("inf"), dtype=torch.float64)
    best_cost.scatter_reduce_(0, f, cost, reduce="amin")
    # θ = floor switches everything above the floor on: only the dropped entries cost
    floor_better = dropped_total <= best_cost
    at_best = cost == best_cost[f]
    # the lowest value reaching the minimum (ties: keep more, like the batch rule at its cut-off)
    best_value = torch.full((n_features,), float("inf"), dtype=torch.float64)
    best_value.scatter_reduce_(0, f[at_best], v[at_best], reduce="amin")
    seen = counts > 0
    chosen = torch.where(floor_better, torch.full_like(best_value, floor), best_value)
    theta[seen] = chosen[seen].float()
    return theta


def _segment_cumsum(x: torch.Tensor, segment: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """Cumulative sums of `x` restarted at each segment (entries grouped by `segment`)."""
    total = torch.cumsum(x, 0)
    before = total - x
    return total - before[starts[segment]]
