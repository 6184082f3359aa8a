"""Computing adjacency rows: one batched backward pass per batch of targets.

A row holds the direct effects of every source on one target. In the frozen replacement model the
target's value is linear in the sources, so its gradient at each hook, dotted with each source's
vector there, is that source's direct effect. A batch of targets is handled by one backward pass:

- "vmap" (default): one forward pass of a single copy of the prompt, then
  `torch.autograd.grad(..., is_grads_batched=True)` pushes a batch of cotangents through it with
  vmap. Activations are stored once, not once per batch element.
- "expand": the prompt is repeated `batch_size` times along the batch axis and batch element `b`
  carries target `b` (circuit-tracer's approach); used where vmap is unavailable.

Only the causal cone is touched. Gradients exist only below the deepest target layer in the
batch, and nothing after the last target position matters (attention is causal), so each batch
runs through a frozen pass over a prefix of the prompt: prompt lengths are split into a few
buckets, targets are grouped by bucket and, within one, by layer, and a batch uses the shortest
prefix that holds all its targets. Attention's cost grows with length², so this about halves
the work on long prompts.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable

import torch

from circuit_atlas.attribution.sources import AttributionSources, DecoderGroup

LOGIT_LAYER = -1  # marks a target read at the final-norm output

# Prompts up to this length run every batch over the whole prompt; longer ones use prefixes.
MIN_BUCKETED_LENGTH = 64
N_LENGTH_BUCKETS = 4


def prefix_lengths(n_positions: int) -> list[int]:
    """The prefix lengths batches may run over (ascending, the last is the whole prompt)."""
    if n_positions <= MIN_BUCKETED_LENGTH:
        return [n_positions]
    return sorted({-(-n_positions * i // N_LENGTH_BUCKETS) for i in range(1, N_LENGTH_BUCKETS + 1)})


def bucket_of(positions: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Index of the shortest prefix length that contains each position."""
    return torch.bucketize(positions.contiguous(), torch.tensor(lengths, device=positions.device), right=True)


@dataclass
class Injection:
    """Targets of one batch: where each is read and along which direction."""

    layers: torch.Tensor  # [B] target layer, or LOGIT_LAYER for logits
    positions: torch.Tensor  # [B]
    vectors: torch.Tensor  # [B, d]


class RowComputer:
    """Turns batches of targets into adjacency rows over all source columns."""

    def __init__(self, frozen_for: Callable[[int], object], sources: AttributionSources, strategy: str):
        """`frozen_for(length)` builds the frozen pass over the first `length` positions."""
        self.frozen_for = frozen_for
        self.sources = sources
        self.strategy = strategy
        self.n_layers = sources.n_layers
        self.lengths = prefix_lengths(sources.n_positions)
        self._frozen_length = -1
        self.frozen = None

    def _use_length(self, reach: int) -> int:
        """Switch to the shortest frozen prefix holding position `reach - 1` (one kept at a time)."""
        length = next(n for n in self.lengths if n >= reach)
        if length != self._frozen_length:
            self.frozen = None  # free the previous pass before building the next
            self.frozen = self.frozen_for(length)
            self._frozen_length = length
        return length

    def rows(self, injection: Injection) -> torch.Tensor:
        """`[B, n_columns]` float32 rows for one batch of targets."""
        gradients, embedding_gradient = self._gradients(injection)
        batch = injection.layers.shape[0]
        reach = int(injection.positions.max()) + 1
        length = self._frozen_length
        out = torch.zeros(batch, self.sources.n_columns, dtype=torch.float32, device=embedding_gradient.device)
        for layer, gradient in enumerate(gradients):
            if gradient is None:
                continue
            self._add_decoder_effects(out, gradient, self.sources.decoder_groups[layer], reach)
            start = self.sources.error_column(layer, 0)
            out[:, start : start + length] = torch.einsum(
                "bpd,pd->bp", gradient, self.sources.errors[layer, :length]
            ).float()
        start = self.sources.token_column(0)
        out[:, start : start + length] = torch.einsum(
            "bpd,pd->bp", embedding_gradient, self.sources.token_vectors[:length]
        ).float()
        return out

    @staticmethod
    def _add_decoder_effects(out: torch.Tensor, gradient: torch.Tensor, group: DecoderGroup, reach: int) -> None:
        """Add `⟨gradient[b, pos], vector⟩` into each vector's source column.

        `reach` is one past the last position any target of the batch reads: gradients beyond it
        are zero (attention is causal), so those positions are skipped.
        """
        by_position = gradient.permute(1, 2, 0)  # [P, d, B] view: one gather per block below
        for block in group.blocks:
            k = bisect.bisect_left(block.position_list, reach)
            if k == 0:
                continue
            grads = by_position[block.positions[:k]]  # [k, d, B], contiguous as bmm wants it
            effects = torch.bmm(block.vectors[:k], grads)  # [k, m, B]
            valid = block.valid[:k]
            out.index_add_(1, block.columns[:k][valid], effects[valid].t().float())

    def _gradients(self, injection: Injection):
        self._use_length(int(injection.positions.max()) + 1)
        readouts, cotangents = self._readouts(injection)
        deepest = int(injection.layers.max()) if (injection.layers >= 0).all() else self.n_layers
        wrt = [self.frozen.outputs[layer] for layer in range(deepest)] + [self.frozen.embeddings]
        if self.strategy == "vmap":
            grads = torch.autograd.grad(
                readouts, wrt, grad_outputs=cotangents, retain_graph=True, allow_unused=True, is_grads_batched=True
            )
            grads = [None if g is None else g[:, 0] for g in grads]
        else:
            scalar = sum((r * c).sum() for r, c in zip(readouts, cotangents))
            grads = list(torch.autograd.grad(scalar, wrt, retain_graph=True, allow_unused=True))
            batch = injection.layers.shape[0]
            grads = [None if g is None else g[:batch] for g in grads]
        layer_grads = list(grads[:-1]) + [None] * (self.n_layers - deepest)
        embedding_gradient = grads[-1]
        if embedding_gradient is None:
            shape = (injection.layers.shape[0],) + tuple(self.frozen.embeddings.shape[1:])
            embedding_gradient = torch.zeros(shape, dtype=self.frozen.embeddings.dtype, device=self.frozen.embeddings.device)
        return layer_grads, embedding_gradient

    def _readouts(self, injection: Injection):
        """The tensors read by the targets, with one cotangent per batch element."""
        readouts, cotangents = [], []
        batch = injection.layers.shape[0]
        for layer in torch.unique(injection.layers).tolist():
            tensor = self.frozen.final_hidden if layer == LOGIT_LAYER else self.frozen.inputs[layer]
            members = torch.nonzero(injection.layers == layer).flatten()
            readouts.append(tensor)
            cotangents.append(self._cotangent(tensor, batch, members, injection))
        return readouts, cotangents

    def _cotangent(self, tensor, batch, members, injection) -> torch.Tensor:
        vectors = injection.vectors[members].to(tensor.dtype)
        positions = injection.positions[members]
        if self.strategy == "vmap":
            cot = torch.zeros((batch,) + tuple(tensor.shape), dtype=tensor.dtype, device=tensor.device)
            cot[members, 0, positions] = vectors
        else:
            cot = torch.zeros_like(tensor)
            cot[members, positions] = vectors
        return cot
