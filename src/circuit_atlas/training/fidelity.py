"""Does the exported set compute what was trained? Trained-vs-exported FVU on the same data.

Training and export differ where the activation function does: BatchTopK becomes a JumpReLU
with fitted thresholds, and normalisation scales are folded into the weights. A user traces
with the exported file, so every training run measures both on the same activation pairs and
reports the gap (`ExportFidelity.relative_gap`); a gap above `TOLERANCE` is a warning, not a
number to bury in a log.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch

from circuit_atlas.training.architecture import TranscoderStack
from circuit_atlas.training.metrics import MetricSums

TOLERANCE = 0.01


@dataclass
class ExportFidelity:
    """Per trained layer: FVU and L0 of the training activation and of the exported set."""

    trained_fvu: list[float]
    exported_fvu: list[float]
    trained_l0: list[float]
    exported_l0: list[float]
    tokens: int

    @property
    def relative_gap(self) -> float:
        """Largest (exported − trained) / trained FVU over the layers (≤ 0: no loss)."""
        return max((e - t) / max(t, 1e-12) for t, e in zip(self.trained_fvu, self.exported_fvu))

    @property
    def ok(self) -> bool:
        return self.relative_gap <= TOLERANCE

    def to_json(self) -> dict:
        return asdict(self) | {"relative_gap": self.relative_gap}

    def summary(self) -> str:
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        return (f"trained FVU {mean(self.trained_fvu):.5f} (L0 {mean(self.trained_l0):.2f}), "
                f"exported FVU {mean(self.exported_fvu):.5f} (L0 {mean(self.exported_l0):.2f}), "
                f"largest layer gap {100 * self.relative_gap:+.2f} % on {self.tokens} tokens")


@torch.no_grad()
def export_fidelity(stack: TranscoderStack, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    transcoders) -> ExportFidelity:
    """Compare `stack` (training activation, batch by batch) with `transcoders` (the exported
    set as `export.to_transcoders` builds it: layer i is the stack's layer i) on raw `(x, y)`
    batches `[N, L, d]`."""
    trained: MetricSums | None = None
    exported: MetricSums | None = None
    tokens = 0
    scale_in = stack.input_scale[None, :, None]
    scale_out = stack.target_scale[None, :, None]
    for x, y in batches:
        x, y = x.to(stack.W_enc.device).float(), y.to(stack.W_enc.device).float()
        out = stack(x / scale_in)
        sums = MetricSums.from_batch(out.recon * scale_out, y, out.acts)
        trained = sums if trained is None else trained.add(sums)
        acts = {s: transcoders.encode(s, x[:, s]) for s in range(stack.n_layers)}
        recon = torch.stack([transcoders.reconstruct(t, acts, x[:, t])
                             for t in range(stack.n_layers)], dim=1)
        sums = MetricSums.from_batch(recon.float(), y, torch.stack(
            [acts[s] for s in range(stack.n_layers)], dim=1))
        exported = sums if exported is None else exported.add(sums)
        tokens += int(x.shape[0])
    if trained is None or exported is None:
        raise ValueError("export_fidelity needs at least one batch")
    return ExportFidelity(trained.fvu(), exported.fvu(), trained.l0(), exported.l0(), tokens)
