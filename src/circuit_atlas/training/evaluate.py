"""Evaluate any transcoder set on held-out text: per-layer NMSE / FVU / L0 / dead fraction and
the loss recovered by the replacement model.

Works on the `Transcoders` interface (not the training module), so it evaluates sets trained
here, downloaded, or converted alike. Three passes per batch of windows:

1. clean: the original model; gives the next-token loss L_orig and the (input, output) hook
   values the per-layer reconstruction metrics are computed from;
2. replacement: every layer's output hook is replaced by the transcoders' reconstruction,
   computed from that pass's own input hook (for a CLT from every source layer ≤ l of the same
   pass), so errors compound as they would in a model that truly used the transcoders: L_repl;
3. zero-ablation: every output hook is set to 0: L_zero.

loss recovered = (L_zero − L_repl) / (L_zero − L_orig): 1 means the replacement predicts as well as
the original model, 0 as badly as deleting every MLP. Zeroed positions (position 0, …) keep their
original values in passes 2 and 3: transcoders are never used there (features and errors are 0).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from circuit_atlas.training.errors import TrainingDataError
from circuit_atlas.training.metrics import MetricSums


@dataclass
class LayerEval:
    layer: int
    nmse: float
    fvu: float
    l0: float
    dead_fraction: float


@dataclass
class EvalReport:
    layers: list[LayerEval]
    ce_original: float
    ce_replacement: float
    ce_zero_ablation: float
    n_tokens: int

    @property
    def loss_recovered(self) -> float:
        gap = self.ce_zero_ablation - self.ce_original
        return float("nan") if gap == 0 else (self.ce_zero_ablation - self.ce_replacement) / gap

    def to_json(self) -> dict:
        data = asdict(self)
        data["loss_recovered"] = self.loss_recovered
        return data

    def table(self) -> str:
        """The metrics table the CLI prints."""
        lines = [f"{'layer':>5}  {'NMSE':>8}  {'FVU':>8}  {'L0':>9}  {'dead':>6}"]
        for row in self.layers:
            lines.append(f"{row.layer:>5}  {row.nmse:>8.4f}  {row.fvu:>8.4f}  {row.l0:>9.2f}  "
                         f"{row.dead_fraction:>6.3f}")
        n = len(self.layers)
        mean = [sum(getattr(r, k) for r in self.layers) / n
                for k in ("nmse", "fvu", "l0", "dead_fraction")]
        lines.append(f"{'mean':>5}  {mean[0]:>8.4f}  {mean[1]:>8.4f}  {mean[2]:>9.2f}  "
                     f"{mean[3]:>6.3f}")
        lines.append("")
        lines.append(f"next-token loss  original {self.ce_original:.4f}  replacement "
                     f"{self.ce_replacement:.4f}  zero-ablated MLPs {self.ce_zero_ablation:.4f}")
        lines.append(f"loss recovered   {self.loss_recovered:.4f}   ({self.n_tokens} tokens)")
        return "\n".join(lines)


@torch.no_grad()
def evaluate_transcoders(lm, transcoders, batches: Iterable[torch.Tensor], *,
                         progress: bool = True) -> EvalReport:
    """Evaluate `transcoders` on batches of token windows `[B, P]` (see module docstring)."""
    tc = transcoders
    tc.validate_against(lm.n_layers, lm.d_model, lm.name)
    z = lm.n_zeroed_positions
    sums: list[MetricSums | None] = [None] * tc.n_layers
    ever_active = torch.zeros(tc.n_layers, tc.n_features, dtype=torch.bool)
    ce = {"original": [0.0, 0], "replacement": [0.0, 0], "zero": [0.0, 0]}
    n_tokens = 0
    for tokens in tqdm(batches, disable=not progress, desc="evaluating", unit="batch"):
        tokens = tokens.to(lm.device)
        clean = lm.forward(tokens, input_hook=tc.input_hook, output_hook=tc.output_hook,
                           record_internals=False)
        _accumulate(ce["original"], clean.logits, tokens)
        acts = {s: _encode(tc, s, clean.inputs[s], z) for s in range(tc.n_layers)}
        for layer in range(tc.n_layers):
            recon = tc.reconstruct(layer, acts, clean.inputs[layer])
            keep = slice(z, None)
            batch_sums = MetricSums.from_batch(
                recon[:, keep].reshape(-1, 1, tc.d_model).float(),
                clean.outputs[layer][:, keep].reshape(-1, 1, tc.d_model).float(),
                acts[layer][:, keep].reshape(-1, 1, tc.n_features))
            sums[layer] = batch_sums if sums[layer] is None else sums[layer].add(batch_sums)
            ever_active[layer] |= (acts[layer] > 0).reshape(-1, tc.n_features).any(0).cpu()
        _accumulate(ce["replacement"], _replacement_logits(lm, tc, tokens, z), tokens)
        _accumulate(ce["zero"], _zero_ablated_logits(lm, tc, tokens, z), tokens)
        n_tokens += tokens.numel()
    if n_tokens == 0:
        raise TrainingDataError("no evaluation text: the held-out corpus gave no token windows")
    layers = []
    for layer, s in enumerate(sums):
        layers.append(LayerEval(layer, s.nmse()[0], s.fvu()[0], float(s.l0()[0]),
                                1.0 - ever_active[layer].double().mean().item()))
    mean = {k: v[0] / max(v[1], 1) for k, v in ce.items()}
    return EvalReport(layers, mean["original"], mean["replacement"], mean["zero"], n_tokens)


def _encode(tc, layer: int, x: torch.Tensor, n_zeroed: int) -> torch.Tensor:
    acts = tc.encode(layer, x)
    acts[:, :n_zeroed] = 0
    return acts


def _accumulate(total: list, logits: torch.Tensor, tokens: torch.Tensor) -> None:
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    total[0] += nll.sum().item()
    total[1] += nll.numel()


def _replacement_logits(lm, tc, tokens: torch.Tensor, n_zeroed: int) -> torch.Tensor:
    acts: dict[int, torch.Tensor] = {}

    def edit(layer: int, x_in: torch.Tensor, y_out: torch.Tensor) -> torch.Tensor:
        acts[layer] = _encode(tc, layer, x_in, n_zeroed)
        recon = tc.reconstruct(layer, acts, x_in).to(y_out.dtype)
        recon[:, :n_zeroed] = y_out[:, :n_zeroed]
        return recon

    return lm.forward(tokens, input_hook=tc.input_hook, output_hook=tc.output_hook,
                      output_edit=edit, record_internals=False).logits


def _zero_ablated_logits(lm, tc, tokens: torch.Tensor, n_zeroed: int) -> torch.Tensor:
    def edit(layer: int, x_in: torch.Tensor, y_out: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(y_out)
        out[:, :n_zeroed] = y_out[:, :n_zeroed]
        return out

    return lm.forward(tokens, input_hook=tc.input_hook, output_hook=tc.output_hook,
                      output_edit=edit, record_internals=False).logits

