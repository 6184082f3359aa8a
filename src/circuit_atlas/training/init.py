"""Start training from an existing transcoder set (`--init-from`): fine-tune it, retrain some of
its layers, or complete a partial set.

The set may be any format `load_transcoders` reads (a hub id, a circuit-tracer or native folder)
or a partial native set written by `circuit-atlas train --layers`. Its weights are in raw model
units; the stack trains in normalised units (`architecture.py`), so they are converted with the
run's own normalisation scales: for stack layer i with input scale s_in and target scale s_out
(per target layer t for a CLT decoder block),

    W_enc ← W_enc·s_in,   W_dec ← W_dec / s_out(t),   b_dec ← b_dec / s_out,
    W_skip ← W_skip·s_in / s_out,   b_enc and JumpReLU thresholds unchanged,

which leaves every pre-activation and reconstruction unchanged. Layers the set does not hold keep
the data-based start. With `normalize_decoder`, decoder rows are brought to unit norm by moving
each row's norm into its encoder row, bias and threshold (exact for ReLU and JumpReLU); TopK
compares features against each other, so there the rows are only rescaled when they are already
within 10 % of unit norm (then the change is small) and otherwise refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from circuit_atlas.training.architecture import TranscoderStack
from circuit_atlas.training.config import ArchitectureConfig
from circuit_atlas.training.errors import TrainingConfigError
from circuit_atlas.transcoders import load_transcoders
from circuit_atlas.transcoders.native import CONFIG_FILE, read_native_layers


@dataclass
class BaseLayer:
    """One layer of the starting set, raw units, in our orientation."""

    W_enc: torch.Tensor               # [F, d]
    b_enc: torch.Tensor               # [F]
    b_dec: torch.Tensor               # [d]
    W_dec: torch.Tensor               # [F, d] (PLT) or [F, L − l, d] (CLT)
    threshold: torch.Tensor | None    # [F]
    W_skip: torch.Tensor | None       # [d, d]


@dataclass
class BaseSet:
    """A starting set: its layers by model layer number, and what kind of set it is."""

    ref: str
    kind: str                 # "plt" | "clt"
    activation: str           # "relu" | "jumprelu" | "topk"
    k: int | None
    n_layers: int             # of the model it belongs to
    n_features: int
    d_model: int
    input_hook: str
    output_hook: str
    skip: bool
    layers: dict[int, BaseLayer]

    @property
    def complete(self) -> bool:
        return sorted(self.layers) == list(range(self.n_layers))


def load_base_set(ref: str) -> BaseSet:
    """Read `ref` eagerly: a partial native folder, or anything `load_transcoders` reads."""
    path = Path(ref).expanduser()
    if (path / CONFIG_FILE).is_file():
        config, parts = read_native_layers(path)
        if len(parts) < config["n_layers"]:
            layers = {n: BaseLayer(p.W_enc, p.b_enc, p.b_dec, p.W_dec[:, 0] if p.W_dec.dim() == 3
                                   and config["kind"] == "plt" else p.W_dec, p.threshold,
                                   p.W_skip) for n, p in parts.items()}
            return BaseSet(ref, config["kind"], config["activation"], config["k"],
                           config["n_layers"], config["n_features"], config["d_model"],
                           config["input_hook"], config["output_hook"], config["skip"], layers)
    tc = load_transcoders(ref, lazy_decoder=False)
    everything = torch.arange(tc.n_features)
    layers = {}
    for n in range(tc.n_layers):
        W_dec = tc.decoder_rows_all(n, everything).float()
        layers[n] = BaseLayer(tc.encoder_weight(n).float(), tc.encoder_bias(n).float(),
                              tc.decoder_bias(n).float(),
                              W_dec[:, 0] if tc.kind == "plt" else W_dec,
                              None if tc.threshold(n) is None else tc.threshold(n).float(),
                              None if tc.skip_weight(n) is None else tc.skip_weight(n).float())
    return BaseSet(ref, tc.kind, tc.activation_name, tc.k, tc.n_layers, tc.n_features,
                   tc.d_model, tc.input_hook, tc.output_hook, tc.has_skip, layers)


def check_compatible(base: BaseSet, arch: ArchitectureConfig, *, n_model_layers: int,
                     layers: list[int], input_hook: str, output_hook: str) -> None:
    """Refuse, naming the difference, a starting set the run cannot continue from."""
    where = f"--init-from {base.ref}"
    kind = "clt" if arch.kind == "clt" else "plt"
    problems = []
    if base.kind != kind:
        problems.append(f"it is a {base.kind.upper()}, this run trains a {arch.kind}")
    if base.skip != arch.has_skip:
        problems.append("it has skip connections" if base.skip else "it has no skip connections"
                        f" and --kind is {arch.kind}")
    if base.n_layers != n_model_layers or base.d_model != arch.d_model:
        problems.append(f"it fits a model of {base.n_layers} layers × d_model {base.d_model}, "
                        f"this one has {n_model_layers} × {arch.d_model}")
    if base.n_features != arch.n_features:
        problems.append(f"it has {base.n_features} features per layer, --features is "
                        f"{arch.n_features}")
    wanted = {"batchtopk": "jumprelu"}.get(arch.activation, arch.activation)
    if base.activation != wanted:
        problems.append(f"its activation is {base.activation}, this run trains {arch.activation}"
                        f" (which needs a {wanted} set)")
    elif base.activation == "topk" and base.k != arch.k:
        problems.append(f"its TopK k is {base.k}, --k is {arch.k}")
    if (base.input_hook, base.output_hook) != (input_hook, output_hook):
        problems.append(f"it reads {base.input_hook} and writes {base.output_hook}, this run "
                        f"{input_hook} and {output_hook}")
    if not base.complete and kind == "clt":
        problems.append("a cross-layer set must hold every layer")
    missing = [n for n in range(base.n_layers) if n not in base.layers and n not in layers]
    if missing and layers != list(range(n_model_layers)):
        problems.append(f"it lacks layer(s) {', '.join(map(str, missing))}, which this run does "
                        "not train either, so no complete set could be exported")
    if problems:
        raise TrainingConfigError(f"{where}: cannot start from this set: " + "; ".join(problems))


def base_initializer(base: BaseSet, layers: list[int]):
    """`stack -> None` copying the base set's layers into the stack (see module docstring)."""

    @torch.no_grad()
    def initialise(stack: TranscoderStack) -> None:
        cfg = stack.config
        for i, number in enumerate(layers):
            part = base.layers.get(number)
            if part is None:
                continue  # a layer the set does not hold: keep the data-based start
            s_in = stack.input_scale[i].item()
            stack.W_enc[i].copy_(part.W_enc.to(stack.W_enc) * s_in)
            stack.b_enc[i].copy_(part.b_enc.to(stack.b_enc))
            stack.b_dec[i].copy_(part.b_dec.to(stack.b_dec) / stack.target_scale[i])
            if cfg.cross_layer:
                targets = stack.target_scale[i:i + part.W_dec.shape[1]]
                stack.W_dec[i].copy_(part.W_dec.to(stack.b_dec) / targets[None, :, None])
            else:
                stack.W_dec[i].copy_(part.W_dec.to(stack.b_dec) / stack.target_scale[i])
            if stack.W_skip is not None and part.W_skip is not None:
                stack.W_skip[i].copy_(part.W_skip.to(stack.b_dec) * s_in
                                      / stack.target_scale[i])
            if stack.log_threshold is not None and part.threshold is not None:
                stack.log_threshold[i].copy_(part.threshold.to(stack.b_enc).clamp_min(1e-6).log())
        if cfg.unit_decoder:
            _fold_decoder_norms(stack)

    return initialise


def _fold_decoder_norms(stack: TranscoderStack) -> None:
    norms = stack.decoder_norms().clamp_min(1e-12)  # [L, F]
    if stack.config.activation == "topk":
        if (norms - 1).abs().max() > 0.1:
            raise TrainingConfigError(
                "--init-from: the set's decoder rows are far from unit norm, and rescaling them "
                "would change which features a TopK transcoder picks; train it with "
                "--no-normalize-decoder")
    else:
        stack.W_enc.mul_(norms[:, :, None])
        stack.b_enc.mul_(norms)
        if stack.log_threshold is not None:
            stack.log_threshold.add_(norms.log())
    stack.normalize_decoder_rows()
    if not math.isfinite(float(stack.W_enc.abs().max())):
        raise TrainingConfigError("--init-from: the set's weights are not finite")
