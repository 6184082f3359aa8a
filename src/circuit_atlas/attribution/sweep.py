"""Adjacency rows by a reverse sweep through the frozen model, one layer's gradient at a time.

A row holds the direct effects of every source on one target: the target's gradient at each output
hook, dotted with what each source writes there (see `decoders.py`, `sources.py`). Asking autograd
for the gradients at every layer at once keeps `layers × batch × positions × d_model` numbers alive
(9 GiB for a 4-layer, d 2048 model at 1024 tokens and batch 64). The frozen pass records the
residual stream between layers instead, and the backward pass is taken one layer at a time:
the gradient entering layer `l` from above, plus the cotangents of the targets that read layer
`l`, give the gradients at the residual below and at layer `l`'s output hook; the latter is
contracted with that layer's decoder, error and token columns at once and dropped. About one
layer's gradient is alive at any moment.

Batches of targets are pushed through the backward together, as in the dense engine: "vmap"
(one forward copy, `autograd.grad(is_grads_batched=True)`) or "expand" (a batch-expanded forward).
A batch costs `batch × depth × prefix` whatever its targets: its pass runs over the prompt up to
its last target (positions after it do not matter) and down from its deepest target. So batches
are formed from targets of one layer at neighbouring positions (`plan_batches`): a batch mixing
layers and prefixes would pay the deepest layer and the longest prefix for every target (1.6× the
work on the benchmark's rounds of 256 features).

Where the model allows (`ReplacementModel.frozen_hops`), the hops are not autograd's: the first
ones below a batch's targets in low-rank form (a gradient near its target is a few vectors times
position coefficients), the rest closed-form on dense gradients, and then no frozen pass is built
at all (`_closed_form`). Autograd remains for skip transcoders and layouts without a closed form.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from circuit_atlas.attribution.decoders import DecoderPlan, contract
from circuit_atlas.attribution.rows import LOGIT_LAYER, Injection
from circuit_atlas.models.frozen_hops import FrozenHops, LowRankGradient

# Gradients alive during one layer's batched backward, in units of batch × prefix × d_model × item
# (from above, at the output hook, the injected cotangent, and the layer's internals; measured).
SWEEP_GRADIENTS = 6
# The same for the closed-form hops (`FrozenHops.through_dense`): the gradient, the heads'
# cotangents, the transposed attention's pieces and their concatenation, the value projection's
# input and the norm transpose's float32 copy (counted from the code, in float32).
CLOSED_FORM_GRADIENTS = 8
# Prompts up to this length run every batch over the whole prompt.
MIN_PREFIX_LENGTH = 64
# Prefix lengths are multiples of the prompt length / this (consecutive batches share passes).
PREFIX_STEPS = 32


def prefix_step(n_positions: int) -> int:
    """Granularity of prefix lengths."""
    if n_positions <= MIN_PREFIX_LENGTH:
        return n_positions
    return max(16, -(-n_positions // PREFIX_STEPS))


def plan_batches(layers: torch.Tensor, positions: torch.Tensor, batch_size: int, n_positions: int) -> list[torch.Tensor]:
    """Batches (indices into the targets) of one layer each, at consecutive positions, ordered by
    prefix length then layer so that consecutive batches reuse one frozen pass."""
    step = prefix_step(n_positions)
    batches: list[tuple[int, int, torch.Tensor]] = []
    for layer in torch.unique(layers).tolist():
        members = torch.nonzero(layers == layer).flatten()
        members = members[torch.argsort(positions[members], stable=True)]
        for start in range(0, members.numel(), batch_size):
            batch = members[start : start + batch_size]
            reach = int(positions[batch].max()) + 1
            batches.append((min(n_positions, -(-reach // step) * step), int(layer), batch))
    batches.sort(key=lambda item: (item[0], item[1]))
    return [batch for _length, _layer, batch in batches]


@dataclass
class BatchRows:
    """Rows of one batch: every active feature's column, and the error and token columns."""

    features: torch.Tensor  # [B, n_active] float32
    fixed: torch.Tensor  # [B, (L + 1) · P] float32: errors layer-major by position, then tokens


@dataclass
class SweepInputs:
    """What the sweep contracts gradients with (all on the compute device)."""

    plan: DecoderPlan
    errors: torch.Tensor  # [L, P, d] compute dtype
    token_vectors: torch.Tensor  # [P, d] compute dtype
    n_active: int
    transcoders: object


class LayerSweep:
    """Turns batches of targets into rows, holding about one layer's batched gradient at a time."""

    def __init__(self, frozen_for: Callable[[int], object], inputs: SweepInputs, strategy: str,
                 budget: int | None = None, hops: FrozenHops | None = None):
        """`frozen_for(length)` builds the frozen pass (with residuals) over the first `length`
        positions; `strategy` is "vmap" or "expand". `budget` bounds the bytes of one backward's
        gradients and row accumulators: a batch that would exceed it runs in parts (same rows;
        the attention tiles are recomputed per part). `hops` (`ReplacementModel.frozen_hops`)
        takes the first hops below a batch's targets in low-rank form while that is cheaper
        than autograd's dense hop; None leaves every hop to autograd."""
        self.frozen_for = frozen_for
        self.hops = hops
        self.inputs = inputs
        self.strategy = strategy
        self.budget = budget
        self.n_layers, self.n_positions = int(inputs.errors.shape[0]), int(inputs.errors.shape[1])
        self.step = prefix_step(self.n_positions)
        self._length = -1
        self._frozen = None
        self._frozen_length = -1

    @property
    def n_fixed(self) -> int:
        return (self.n_layers + 1) * self.n_positions

    def _use_length(self, reach: int) -> int:
        self._length = min(self.n_positions, -(-reach // self.step) * self.step)
        return self._length

    @property
    def frozen(self):
        """The frozen pass over the current prefix, built when autograd first needs it (batches
        taken wholly in closed form never do) and kept while the prefix length stays."""
        if self._frozen is None or self._frozen_length != self._length:
            self._frozen = None  # free the previous pass before building the next
            self._frozen = self.frozen_for(self._length)
            self._frozen_length = self._length
        return self._frozen

    def part_size(self, reach: int, item: int) -> int:
        """Targets per backward pass within the budget, for targets up to position `reach - 1`."""
        if self.budget is None or self.strategy != "vmap":
            return 1 << 30
        length = min(self.n_positions, -(-reach // self.step) * self.step)
        d_model = int(self.inputs.errors.shape[2])
        gradients = CLOSED_FORM_GRADIENTS if self.hops is not None and self.hops.complete else SWEEP_GRADIENTS
        per_target = gradients * length * d_model * item + (self.inputs.n_active + self.n_fixed) * 4
        return max(1, self.budget // per_target)

    def rows_in_parts(self, injection: Injection):
        """Yield `(slice of the batch, BatchRows)`, the batch cut into parts within the budget."""
        batch = int(injection.layers.shape[0])
        reach = int(injection.positions.max()) + 1
        size = self.part_size(reach, self.inputs.errors.element_size())
        for start in range(0, batch, size):
            part = slice(start, min(batch, start + size))
            yield part, self.rows(Injection(injection.layers[part], injection.positions[part],
                                            injection.vectors[part]))

    def rows(self, injection: Injection) -> BatchRows:
        """Rows `[B, ...]` of one batch of targets."""
        batch = int(injection.layers.shape[0])
        reach = int(injection.positions.max()) + 1
        length = self._use_length(reach)
        device = self.inputs.errors.device
        features = torch.zeros(batch, self.inputs.n_active, dtype=torch.float32, device=device)
        fixed = torch.zeros(batch, self.n_fixed, dtype=torch.float32, device=device)
        for layer, gradient in self._gradients(injection):
            gradient = gradient.to(device)  # layers may sit on other devices (a split model)
            if layer == "embedding":
                start = self.n_layers * self.n_positions
                fixed[:, start : start + length] = torch.einsum(
                    "bpd,pd->bp", gradient, self.inputs.token_vectors[:length]).float()
                continue
            contract(features, gradient, self.inputs.plan, layer, reach, self.inputs.transcoders)
            start = layer * self.n_positions
            fixed[:, start : start + length] = torch.einsum(
                "bpd,pd->bp", gradient, self.inputs.errors[layer, :length]).float()
        return BatchRows(features, fixed)

    # --- the backward sweep ------------------------------------------------------------------------
    def _gradients(self, injection: Injection):
        """Yield `(layer, gradient at its output hook [B, P', d])` from the top layer down, then
        `("embedding", gradient at the embedding)`. Layers above the deepest target are skipped.

        A batch of one layer's features (or of logits) starts in low-rank form (`frozen_hops`):
        the hop into the targets' layer (below the final norm), then each hop below while it is
        cheaper than autograd's; from the first dense hop on, autograd goes on layer by layer."""
        batch = int(injection.layers.shape[0])
        targets = set(torch.unique(injection.layers).tolist())
        if self.hops is not None and self.hops.complete and (len(targets) == 1):
            yield from self._closed_form(injection, targets.pop())
            return
        frozen = self.frozen
        above, low_rank, top = self._start(injection, targets)
        for layer in range(top, -1, -1):
            if low_rank is not None:
                above = self._batched(low_rank.dense(frozen.residuals[layer + 1].dtype))
                low_rank = self._low_rank_hop(layer, low_rank)
                if low_rank is not None:  # autograd only for the output hook's gradient
                    (at_output,) = self._grad([frozen.residuals[layer + 1]], [above], [frozen.outputs[layer]])
                    if at_output is not None:
                        yield layer, self._per_target(at_output, batch)
                    del above, at_output
                    continue
            outputs, cotangents = [], []
            if above is not None:
                outputs.append(frozen.residuals[layer + 1])
                cotangents.append(above)
            if layer in targets:  # built only now: one layer's cotangent alive at a time
                outputs.append(frozen.inputs[layer])
                cotangents.append(self._cotangent(injection, layer))
            if not outputs:
                continue
            above, at_output = self._grad(outputs, cotangents, [frozen.residuals[layer], frozen.outputs[layer]])
            del cotangents
            if at_output is not None:
                yield layer, self._per_target(at_output, batch)
            del at_output
        if low_rank is not None:
            above = self._batched(low_rank.dense(frozen.embeddings.dtype))
        if above is None:
            yield "embedding", torch.zeros((batch,) + tuple(frozen.embeddings.shape[1:]),
                                           dtype=frozen.embeddings.dtype, device=frozen.embeddings.device)
        else:
            yield "embedding", self._per_target(above, batch)

    def _closed_form(self, injection: Injection, target: int):
        """`_gradients` without autograd (`FrozenHops.complete`): low-rank hops while cheaper,
        then `through_dense` hops, and no frozen pass at all."""
        hops, length = self.hops, self._length
        if target == LOGIT_LAYER:
            low_rank, top = hops.final(injection.positions, injection.vectors, length), self.n_layers - 1
        else:
            low_rank, top = hops.entry(target, injection.positions, injection.vectors, length), target - 1
        dtype = self.inputs.errors.dtype
        dense = None
        for layer in range(top, -1, -1):
            gradient = dense if low_rank is None else low_rank.dense(dtype)  # entering layer + 1
            yield layer, hops.output_gradient(layer, gradient)
            if low_rank is not None:
                low_rank = self._low_rank_hop(layer, low_rank)
            dense = hops.through_dense(layer, gradient) if low_rank is None else None
            del gradient
        yield "embedding", dense if low_rank is None else low_rank.dense(dtype)

    def _start(self, injection: Injection, targets: set[int]):
        """(dense gradient, low-rank gradient, layer) where the sweep begins: at the residual
        stream entering `layer + 1`, one of the two gradients set (or neither, when the deepest
        targets read `layer` itself and autograd takes that hop with their cotangent)."""
        if LOGIT_LAYER in targets:
            if targets == {LOGIT_LAYER} and self.hops is not None:
                low_rank = self.hops.final(injection.positions, injection.vectors, self._length)
                if low_rank is not None:
                    return None, low_rank, self.n_layers - 1
            cotangent = self._cotangent(injection, LOGIT_LAYER)
            (above,) = self._grad([self.frozen.final_hidden], [cotangent], [self.frozen.residuals[-1]])
            return above, None, self.n_layers - 1
        top = max(targets)
        if len(targets) == 1 and self.hops is not None:
            low_rank = self.hops.entry(top, injection.positions, injection.vectors, self._length)
            if low_rank is not None:
                return None, low_rank, top - 1
        return None, None, top

    def _low_rank_hop(self, layer: int, gradient: LowRankGradient) -> LowRankGradient | None:
        """The hop through `layer` in low-rank form when it costs less than the dense one and its
        tensors fit the budget; None hands the gradient to autograd."""
        batch, length, rank = gradient.coefficients.shape
        cost = self.hops.through_cost(layer, batch, rank, length)
        if cost is None:
            return None
        low, dense, memory = cost
        if low >= dense or (self.budget is not None and memory > self.budget):
            return None
        return self.hops.through(layer, gradient)

    def _batched(self, gradient: torch.Tensor) -> torch.Tensor:
        """`[B, P', d]` shaped like `_grad`'s cotangents: `[B, 1, P', d]` for vmap, padded to the
        expanded pass's copies otherwise."""
        if self.strategy == "vmap":
            return gradient[:, None]
        padded = torch.zeros((self.frozen.batch_size,) + tuple(gradient.shape[1:]), dtype=gradient.dtype,
                             device=gradient.device)
        padded[: gradient.shape[0]] = gradient
        return padded

    def _per_target(self, gradient: torch.Tensor, batch: int) -> torch.Tensor:
        """`[B, P', d]`: one gradient per target of the batch."""
        return gradient[:, 0] if self.strategy == "vmap" else gradient[:batch]

    def _grad(self, outputs, cotangents, inputs) -> list[torch.Tensor | None]:
        """Gradients of `Σ ⟨cotangent, output⟩` with respect to `inputs`, batched like the
        cotangents (`[B, 1, P', d]` for vmap, `[copies, P', d]` expanded); None where an input is
        not reached."""
        grads = torch.autograd.grad(outputs, inputs, grad_outputs=cotangents, retain_graph=True,
                                    allow_unused=True, is_grads_batched=self.strategy == "vmap")
        return list(grads)

    def _cotangent(self, injection: Injection, layer: int) -> torch.Tensor:
        """The cotangent reading the targets of `layer` (LOGIT_LAYER: the final-norm output): each
        batch element's injection vector at its position, zeros elsewhere."""
        batch = int(injection.layers.shape[0])
        tensor = self.frozen.final_hidden if layer == LOGIT_LAYER else self.frozen.inputs[layer]
        members = torch.nonzero(injection.layers == layer).flatten()
        vectors = injection.vectors[members].to(tensor.dtype)
        positions = injection.positions[members]
        if self.strategy == "vmap":
            cotangent = torch.zeros((batch,) + tuple(tensor.shape), dtype=tensor.dtype, device=tensor.device)
            cotangent[members, 0, positions] = vectors
        else:  # the expanded pass has a copy per batch slot (a last, short batch uses a few)
            cotangent = torch.zeros_like(tensor)
            cotangent[members, positions] = vectors
        return cotangent
