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

The ratio only means something when the model beats its own zero-ablation (L_zero > L_orig). On
text the model cannot predict (say, packed windows for a model trained on single lines) deleting
the MLPs can *lower* the loss; the report then refuses to give a loss recovered and says why.

Batches are `[B, P]` token windows, or `(tokens, mask)` pairs of right-padded windows whose
`mask` marks real tokens: padding enters no loss, no reconstruction metric and no L0.
A set of some layers only (`layers`: the model layer of each of the set's layers) is evaluated on
those layers; the other MLPs keep running in passes 2 and 3.
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
    def loss_recovered(self) -> float | None:
        """None when the ratio is meaningless (see `loss_recovered_refusal`)."""
        if self.loss_recovered_refusal is not None:
            return None
        gap = self.ce_zero_ablation - self.ce_original
        return (self.ce_zero_ablation - self.ce_replacement) / gap

    @property
    def loss_recovered_refusal(self) -> str | None:
        """Why no loss recovered is reported, or None when it is."""
        if self.ce_zero_ablation > self.ce_original:
            return None
        return (f"zero-ablating the MLPs gives a next-token loss ({self.ce_zero_ablation:.4f}) "
                f"no higher than the model's own ({self.ce_original:.4f}), so this text is not "
                "text the model predicts (packed windows for a model trained on single "
                "documents? try --layout documents)")

    def to_json(self) -> dict:
        data = asdict(self)
        data["loss_recovered"] = self.loss_recovered
        if self.loss_recovered_refusal is not None:
            data["loss_recovered_refused"] = self.loss_recovered_refusal
        return data

    def table(self) -> str:
        """The metrics table the CLI prints."""
        lines = [f"{'layer':>5}  {'NMSE':>8}  {'FVU':>8}  {'L0':>9}  {'never':>6}"]
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
        if self.loss_recovered is None:
            lines.append(f"loss recovered   not reported: {self.loss_recovered_refusal}")
        else:
            lines.append(f"loss recovered   {self.loss_recovered:.4f}   ({self.n_tokens} tokens)")
        return "\n".join(lines)


@torch.no_grad()
def evaluate_transcoders(lm, transcoders, batches: Iterable[torch.Tensor | tuple], *,
                         progress: bool = True, layers: list[int] | None = None) -> EvalReport:
    """Evaluate `transcoders` on batches of token windows (see module docstring)."""
    tc = transcoders
    if layers is None:
        tc.validate_against(lm.n_layers, lm.d_model, lm.name)
        layers = list(range(tc.n_layers))
    index = {model_layer: i for i, model_layer in enumerate(layers)}
    z = lm.n_zeroed_positions
    sums: list[MetricSums | None] = [None] * tc.n_layers
    ever_active = torch.zeros(tc.n_layers, tc.n_features, dtype=torch.bool)
    ce = {"original": [0.0, 0], "replacement": [0.0, 0], "zero": [0.0, 0]}
    n_tokens = 0
    for batch in tqdm(batches, disable=not progress, desc="evaluating", unit="batch"):
        tokens, mask = batch if isinstance(batch, (tuple, list)) else (batch, None)
        tokens = tokens.to(lm.device)
        mask = (torch.ones_like(tokens, dtype=torch.bool) if mask is None
                else mask.to(lm.device))
        keep = mask.clone()
        keep[:, :z] = False
        clean = lm.forward(tokens, input_hook=tc.input_hook, output_hook=tc.output_hook,
                           record_internals=False)
        _accumulate(ce["original"], clean.logits, tokens, mask)
        acts = {i: _encode(tc, i, clean.inputs[layer], z) for i, layer in enumerate(layers)}
        for i, layer in enumerate(layers):
            recon = tc.reconstruct(i, acts, clean.inputs[layer])
            batch_sums = MetricSums.from_batch(
                recon[keep].reshape(-1, 1, tc.d_model).float(),
                clean.outputs[layer][keep].reshape(-1, 1, tc.d_model).float(),
                acts[i][keep].reshape(-1, 1, tc.n_features))
            sums[i] = batch_sums if sums[i] is None else sums[i].add(batch_sums)
            ever_active[i] |= (acts[i][keep] != 0).any(0).cpu()
        _accumulate(ce["replacement"], _replacement_logits(lm, tc, tokens, z, index), tokens,
                    mask)
        _accumulate(ce["zero"], _zero_ablated_logits(lm, tc, tokens, z, index), tokens, mask)
        n_tokens += int(mask.sum())
    if n_tokens == 0:
        raise TrainingDataError("no evaluation text: the held-out corpus gave no token windows")
    report_layers = []
    for i, s in enumerate(sums):
        report_layers.append(LayerEval(layers[i], s.nmse()[0], s.fvu()[0], float(s.l0()[0]),
                                       1.0 - ever_active[i].double().mean().item()))
    mean = {k: v[0] / max(v[1], 1) for k, v in ce.items()}
    return EvalReport(report_layers, mean["original"], mean["replacement"], mean["zero"],
                      n_tokens)


def _encode(tc, layer: int, x: torch.Tensor, n_zeroed: int) -> torch.Tensor:
    acts = tc.encode(layer, x)
    acts[:, :n_zeroed] = 0
    return acts


def _accumulate(total: list, logits: torch.Tensor, tokens: torch.Tensor,
                mask: torch.Tensor) -> None:
    """Next-token NLL summed over the positions whose next token is real."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    real = mask[:, 1:]
    total[0] += nll[real].sum().item()
    total[1] += int(real.sum())


def _replacement_logits(lm, tc, tokens: torch.Tensor, n_zeroed: int,
                        index: dict[int, int]) -> torch.Tensor:
    acts: dict[int, torch.Tensor] = {}

    def edit(layer: int, x_in: torch.Tensor, y_out: torch.Tensor) -> torch.Tensor:
        if layer not in index:
            return y_out
        i = index[layer]
        acts[i] = _encode(tc, i, x_in, n_zeroed)
        recon = tc.reconstruct(i, acts, x_in).to(y_out.dtype)
        recon[:, :n_zeroed] = y_out[:, :n_zeroed]
        return recon

    return lm.forward(tokens, input_hook=tc.input_hook, output_hook=tc.output_hook,
                      output_edit=edit, record_internals=False).logits


def _zero_ablated_logits(lm, tc, tokens: torch.Tensor, n_zeroed: int,
                         index: dict[int, int]) -> torch.Tensor:
    def edit(layer: int, x_in: torch.Tensor, y_out: torch.Tensor) -> torch.Tensor:
        if layer not in index:
            return y_out
        out = torch.zeros_like(y_out)
        out[:, :n_zeroed] = y_out[:, :n_zeroed]
        return out

    return lm.forward(tokens, input_hook=tc.input_hook, output_hook=tc.output_hook,
                      output_edit=edit, record_internals=False).logits
