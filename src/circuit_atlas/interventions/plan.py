"""Applying checked interventions inside one forward pass, as the model's `output_edit`.

Mechanics (`docs/algorithm.md` §12.3): at the output hook of each layer `l` that
has interventions, take the current activations of the intervened features (recomputed in this
pass from the input hook in free mode; the clean ones in constrained mode), form
`δ = target − current`, and queue `δ · W_dec^{(k)}` for every layer `k` the feature writes to
(`l` for a PLT, `l..L−1` for a CLT). At each output hook the queued change is *added*: to the real
MLP output (free), or to the MLP output held at its clean value (constrained). A feature is thus
never substituted for the MLP; only the difference its new value makes is added, so errors and
all other features' contributions stay as they were.

Constrained layers hold `Y_clean + skip(x) − skip(x_clean)`: the MLP is frozen but the
transcoder's linear skip path stays live, exactly the local replacement model of attribution
(§5, §12.3 point 5). Writes into layers outside the constrained range are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuit_atlas.interventions.spec import CheckedIntervention


@dataclass
class HeldOutputs:
    """What constrained mode freezes: the clean output-hook values of `layers`."""

    layers: frozenset[int]
    outputs: torch.Tensor  # [L, P, d] clean output-hook values
    inputs: torch.Tensor  # [L, P, d] clean input-hook values (for the skip correction)
    activations: torch.Tensor  # sparse [L, P, F] clean activations

    def value(self, transcoders, layer: int, x: torch.Tensor) -> torch.Tensor:
        """`[P, d]` output of a constrained layer for the input-hook value `x` `[P, d]` of this pass."""
        held = self.outputs[layer]
        skip_now = transcoders.skip(layer, x)
        if skip_now is None:
            return held
        skip_clean = transcoders.skip(layer, self.inputs[layer])
        return held + (skip_now - skip_clean).to(held.dtype)

    def clean_values(self, layer: int, positions: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Clean activations `[n]` of the (position, feature) pairs, 0 where inactive.

        Looked up in the sparse tensor (sorted keys + binary search) rather than densified:
        a dense `[P, F]` layer of a large CLT at a long prompt is gigabytes.
        """
        layer_acts = self.activations[layer].coalesce()
        n_features = layer_acts.shape[1]
        stored = layer_acts.indices()
        keys = stored[0] * n_features + stored[1]  # ascending: coalesced indices are sorted
        values = layer_acts.values()
        wanted = positions.to(keys.device) * n_features + features.to(keys.device)
        slot = torch.searchsorted(keys, wanted).clamp_max(max(keys.numel() - 1, 0))
        if keys.numel() == 0:
            return torch.zeros(wanted.shape, dtype=values.dtype, device=values.device)
        found = keys[slot] == wanted
        return torch.where(found, values[slot], torch.zeros((), dtype=values.dtype, device=values.device))


@dataclass
class Applied:
    """One intervention as applied in a pass: absolute positions, features, before and after."""

    layer: int
    positions: torch.Tensor  # int64 [n]
    features: torch.Tensor  # int64 [n]
    before: torch.Tensor  # float [n]: activation the delta was taken from
    after: torch.Tensor  # float [n]: the target value


class ClampPlan:
    """The `output_edit` of one pass over positions `[offset, offset + length)` (batch 1)."""

    def __init__(
        self,
        transcoders,
        checked: list[CheckedIntervention],
        *,
        offset: int,
        length: int,
        n_zeroed: int,
        held: HeldOutputs | None = None,
    ) -> None:
        self.tc = transcoders
        self.offset, self.length, self.n_zeroed = offset, length, n_zeroed
        self.held = held
        self.entries = _entries_by_layer(checked, offset, length, n_zeroed)
        self.pending: dict[int, torch.Tensor] = {}
        self.applied: list[Applied] = []

    @property
    def empty(self) -> bool:
        return not self.entries and self.held is None

    def __call__(self, layer: int, x_in: torch.Tensor, y_out: torch.Tensor) -> torch.Tensor:
        x = x_in[0]
        if layer in self.entries:
            self._queue(layer, x)
        y = y_out
        if self.held is not None and layer in self.held.layers:
            y = self.held.value(self.tc, layer, x).to(y_out.dtype)[None]
        change = self.pending.pop(layer, None)
        if change is not None:
            y = y + change.to(y.dtype)[None]
        return y

    # ------------------------------------------------------------------ internals
    def _current(self, layer: int, x: torch.Tensor, local: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Activations the deltas are taken from (post-activation, zeroed positions 0)."""
        if self.held is not None:
            return self.held.clean_values(layer, local + self.offset, features).to(x.device)
        acts = self.tc.encode_entries(layer, x, local, features)
        zeroed = (local.to(acts.device) + self.offset) < self.n_zeroed
        return acts.masked_fill(zeroed, 0)

    def _queue(self, layer: int, x: torch.Tensor) -> None:
        # Entries are built on the CPU; index and scale on the device the activations live on.
        local, features, mul, add = self.entries[layer]
        local, features = local.to(x.device), features.to(x.device)
        current = self._current(layer, x, local, features).to(self.tc.dtype)
        target = current * mul.to(current) + add.to(current)  # device and dtype in one step
        delta = target - current
        self.applied.append(Applied(layer, (local + self.offset).cpu(), features.cpu(),
                                    current.detach().cpu(), target.detach().cpu()))
        moving = delta.ne(0)
        if not bool(moving.any()):
            return
        local, features, delta = local[moving], features[moving], delta[moving]
        for target_layer in self.tc.target_layers(layer):
            if self.held is not None and target_layer not in self.held.layers:
                continue  # constrained: writes outside the range are dropped
            rows = self.tc.decoder_rows(layer, features, target_layer)
            change = torch.zeros(self.length, rows.shape[-1], dtype=rows.dtype, device=rows.device)
            change.index_add_(0, local.to(rows.device), delta.to(rows.device)[:, None] * rows)
            previous = self.pending.get(target_layer)
            self.pending[target_layer] = change if previous is None else previous + change


def _entries_by_layer(checked: list[CheckedIntervention], offset: int, length: int, n_zeroed: int):
    """layer -> (local positions, features, mul, add), one entry per (position, feature)."""
    grouped: dict[int, list[tuple[int, int, float, float]]] = {}
    for item in checked:
        for position in item.rule.covers(offset, offset + length, n_zeroed):
            for feature in item.features.tolist():
                grouped.setdefault(item.layer, []).append((position - offset, feature, item.mul, item.add))
    entries = {}
    for layer, rows in grouped.items():
        local, features, mul, add = zip(*rows)
        entries[layer] = (
            torch.tensor(local, dtype=torch.long),
            torch.tensor(features, dtype=torch.long),
            torch.tensor(mul, dtype=torch.float64),
            torch.tensor(add, dtype=torch.float64),
        )
    return entries
