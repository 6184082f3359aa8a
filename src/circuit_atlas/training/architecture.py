"""The trainable transcoder stack: PLT, skip transcoder and CLT in one module.

All layers are trained together on `[N, L, d]` batches (N tokens, every layer at once), because a
CLT couples layers anyway and a PLT stack then costs one batched einsum per step instead of L
separate models. Orientation matches circuit-tracer (one row per feature): `W_enc [L, F, d]`,
PLT `W_dec [L, F, d]`, CLT `W_dec[s] [F, L−s, d]` (row f of source s, block j writes into layer s+j),
`W_skip [L, d_out, d_in]` applied as `x·W_skipᵀ`.

The module works in *normalised* units: inputs and targets are divided per layer by
`input_scale` / `target_scale` (buffers, so checkpoints carry them) to have mean squared norm d.
That makes one set of hyper-parameters fit models of any width; `export_weights` folds the
scales back into the weights so exported transcoders read raw model activations and produce the
same feature activations as during training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from circuit_atlas.training.activations import batch_topk, jumprelu, topk_per_token
from circuit_atlas.training.config import ArchitectureConfig


@dataclass
class StackOutput:
    """One forward pass: pre-activations and activations `[N, L, F]`, reconstruction `[N, L, d]`,
    and the decoder norms `[L, F]` the sparsity penalties are weighted by."""

    pre: torch.Tensor
    acts: torch.Tensor
    recon: torch.Tensor
    decoder_norms: torch.Tensor


@dataclass
class ExportedWeights:
    """Weights in raw model units (scales folded in), ready for any on-disk format.

    `W_dec[s]` is `[F, d]` for PLT/skip and `[F, L−s, d]` for CLT; `threshold` is `[L, F]` for
    JumpReLU (BatchTopK is exported as JumpReLU with per-feature thresholds) and None for ReLU
    and TopK; `k` is TopK's k (None otherwise).
    """

    kind: str
    activation: str
    k: int | None
    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: list[torch.Tensor]
    b_dec: torch.Tensor
    W_skip: torch.Tensor | None
    threshold: torch.Tensor | None


class TranscoderStack(nn.Module):
    """Encoders, decoders, optional skip and JumpReLU thresholds for every layer."""

    def __init__(self, config: ArchitectureConfig, *, seed: int = 0) -> None:
        super().__init__()
        self.config = config.validate()
        L, F, d = config.n_layers, config.n_features, config.d_model
        gen = torch.Generator().manual_seed(seed)
        self.W_enc = nn.Parameter(_unit_rows((L, F, d), gen))
        self.b_enc = nn.Parameter(torch.zeros(L, F))
        dec_scale = config.decoder_init_norm * math.sqrt(d)
        if config.cross_layer:
            self.W_dec = nn.ParameterList(
                nn.Parameter(_unit_rows((F, L - s, d), gen) * dec_scale / math.sqrt(L - s))
                for s in range(L))
        else:
            self.W_dec = nn.Parameter(_unit_rows((L, F, d), gen) * dec_scale)
        self.b_dec = nn.Parameter(torch.zeros(L, d))
        self.W_skip = nn.Parameter(torch.zeros(L, d, d)) if config.has_skip else None
        if config.activation == "jumprelu":
            self.log_threshold = nn.Parameter(
                torch.full((L, F), math.log(config.initial_threshold)))
        else:
            self.log_threshold = None
        self.register_buffer("input_scale", torch.ones(L))
        self.register_buffer("target_scale", torch.ones(L))
        # BatchTopK → JumpReLU conversion: EMA of the batch threshold and its update count (the
        # fallback), and the per-feature thresholds fitted after training (`thresholds.py`).
        self.register_buffer("threshold_estimate", torch.zeros(L))
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.int64))
        self.register_buffer("feature_threshold", torch.zeros(L, F))
        self.register_buffer("feature_threshold_fitted", torch.zeros((), dtype=torch.bool))

    # -- shapes -----------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return self.config.n_layers

    @property
    def n_features(self) -> int:
        return self.config.n_features

    @property
    def d_model(self) -> int:
        return self.config.d_model

    def decoder_blocks(self) -> list[torch.Tensor]:
        """Per source layer s, the decoder `[F, T_s, d]` with T_s target layers (1 for PLT)."""
        if self.config.cross_layer:
            return list(self.W_dec)
        return [self.W_dec[s].unsqueeze(1) for s in range(self.n_layers)]

    # -- forward ----------------------------------------------------------------------------
    def threshold(self) -> torch.Tensor | None:
        return None if self.log_threshold is None else self.log_threshold.exp()

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nld,lfd->nlf", x, self.W_enc) + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """Training activation (BatchTopK stays BatchTopK here; see `activate_inference`)."""
        act = self.config.activation
        if act == "relu":
            return torch.relu(pre)
        if act == "jumprelu":
            return jumprelu(pre, self.threshold(), self.config.bandwidth)
        if act == "topk":
            return topk_per_token(pre, self.config.k)
        return batch_topk(pre, self.config.k)

    def inference_threshold(self) -> torch.Tensor | None:
        """θ `[L, F]` of the exported JumpReLU, or None for ReLU and TopK.

        BatchTopK uses the per-feature thresholds fitted after training, or, before they are
        fitted, the running estimate of the batch cut-off for every feature."""
        act = self.config.activation
        if act in ("relu", "topk"):
            return None
        if act == "jumprelu":
            return self.threshold().detach()
        if bool(self.feature_threshold_fitted):
            return self.feature_threshold.detach()
        return self.threshold_estimate.detach()[:, None].expand(self.n_layers, self.n_features)

    @property
    def inference_activation(self) -> str:
        """The activation function of the exported transcoders: relu, jumprelu or topk."""
        act = self.config.activation
        return "jumprelu" if act == "batchtopk" else act

    def activate_inference(self, pre: torch.Tensor) -> torch.Tensor:
        """The exported transcoders' activation: ReLU, strict JumpReLU or TopK. TopK is the same
        function in training and inference (per token, no batch dependence), so it is exported
        as TopK; only BatchTopK, whose cut-off depends on the batch, becomes a JumpReLU."""
        if self.config.activation == "topk":
            return topk_per_token(pre, self.config.k)
        theta = self.inference_threshold()
        if theta is None:
            return torch.relu(pre)
        return pre * (pre > theta).to(pre.dtype)

    def decode(self, acts: torch.Tensor, x: torch.Tensor | None = None, *,
               biases: bool = True) -> torch.Tensor:
        """Reconstruction `[N, L, d]`: Σ over sources s ≤ t of acts_s·W_dec[s][:, t−s] (+ b_dec and
        the skip term when `biases`)."""
        n = acts.shape[0]
        # accumulate in float32: under bf16 autocast the einsums return bf16 contributions
        recon = acts.new_zeros(n, self.n_layers, self.d_model, dtype=torch.float32)
        for s, block in enumerate(self.decoder_blocks()):
            contrib = torch.einsum("nf,ftd->ntd", acts[:, s], block.to(acts.dtype))
            recon = recon.index_add(1, torch.arange(s, s + block.shape[1], device=acts.device),
                                    contrib.float())
        if biases:
            recon = recon + self.b_dec.float()
            if self.W_skip is not None and x is not None:
                recon = recon + torch.einsum("nli,loi->nlo", x, self.W_skip).float()
        return recon

    def decoder_norms(self) -> torch.Tensor:
        """‖W_dec‖ `[L, F]`; for a CLT the norm of the concatenation over all target layers."""
        return torch.stack([b.pow(2).sum(dim=(1, 2)).sqrt() for b in self.decoder_blocks()])

    def decoder_parameters(self) -> list[nn.Parameter]:
        """The decoder weights as parameters: one `[F, T, d]` per source (CLT) or `[L, F, d]`."""
        return list(self.W_dec) if self.config.cross_layer else [self.W_dec]

    @torch.no_grad()
    def project_decoder_gradients(self) -> None:
        """Remove from each decoder row's gradient its component along the row, so a step
        (to first order) only turns the row; `normalize_decoder_rows` then undoes the rest."""
        for param in self.decoder_parameters():
            if param.grad is None:
                continue
            cross = self.config.cross_layer
            rows, grads = _feature_rows(param, cross), _feature_rows(param.grad, cross)
            unit = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            grads -= (grads * unit).sum(-1, keepdim=True) * unit

    @torch.no_grad()
    def normalize_decoder_rows(self) -> None:
        """Rescale every feature's decoder row (all its target layers together) to unit norm;
        rows that are exactly zero stay zero."""
        for param in self.decoder_parameters():
            rows = _feature_rows(param, self.config.cross_layer)
            rows /= rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    # -- one layer at a time (a model pass with the transcoders in place) ----------------------
    def layer_activations(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Training activations `[n, F]` of stack layer `layer` for normalised inputs `[n, d]`
        (BatchTopK selects over these n tokens)."""
        pre = (x @ self.W_enc[layer].T + self.b_enc[layer]).float()
        if self.config.activation in ("topk", "batchtopk"):
            select = topk_per_token if self.config.activation == "topk" else batch_topk
            return select(pre[:, None], self.config.k)[:, 0]
        if self.config.activation == "relu":
            return torch.relu(pre)
        return jumprelu(pre, self.threshold()[layer], self.config.bandwidth)

    def layer_reconstruction(self, target: int, acts: dict[int, torch.Tensor],
                             x: torch.Tensor) -> torch.Tensor:
        """Normalised reconstruction `[n, d]` of stack layer `target` from the activations of its
        source layers (`acts[s]` `[n, F]`, all s ≤ target for a CLT) and its normalised input."""
        if self.config.cross_layer:
            recon = sum(acts[s] @ self.W_dec[s][:, target - s] for s in range(target + 1))
        else:
            recon = acts[target] @ self.W_dec[target]
        recon = recon + self.b_dec[target]
        if self.W_skip is not None:
            recon = recon + x @ self.W_skip[target].T
        return recon

    def forward(self, x: torch.Tensor) -> StackOutput:
        pre = self.pre_activations(x).float()
        acts = self.activate(pre)
        recon = self.decode(acts, x).float()
        return StackOutput(pre=pre, acts=acts, recon=recon, decoder_norms=self.decoder_norms())

    # -- export -----------------------------------------------------------------------------
    @torch.no_grad()
    def export_weights(self) -> ExportedWeights:
        """Fold the normalisation scales into the weights (see module docstring)."""
        s_in = self.input_scale.float()
        s_out = self.target_scale.float()
        W_enc = self.W_enc.detach().float() / s_in[:, None, None]
        W_dec = []
        for s, block in enumerate(self.decoder_blocks()):
            scaled = block.detach().float() * s_out[s:s + block.shape[1]][None, :, None]
            W_dec.append(scaled if self.config.cross_layer else scaled[:, 0])
        W_skip = None
        if self.W_skip is not None:
            W_skip = self.W_skip.detach().float() * (s_out / s_in)[:, None, None]
        theta = self.inference_threshold()
        topk = self.config.activation == "topk"
        return ExportedWeights(
            kind=self.config.kind,
            activation=self.inference_activation,
            k=self.config.k if topk else None,
            W_enc=W_enc.contiguous(),
            b_enc=self.b_enc.detach().float().clone(),
            W_dec=[w.contiguous() for w in W_dec],
            b_dec=(self.b_dec.detach().float() * s_out[:, None]).contiguous(),
            W_skip=None if W_skip is None else W_skip.contiguous(),
            threshold=None if theta is None else theta.float().contiguous().clone(),
        )


def _feature_rows(tensor: torch.Tensor, cross_layer: bool) -> torch.Tensor:
    """A view with one row per feature on the last axis: a PLT decoder `[L, F, d]` already is
    one; a CLT block `[F, T, d]` becomes `[F, T·d]` (a feature's row spans its target layers)."""
    return tensor.view(tensor.shape[0], -1) if cross_layer else tensor


def _unit_rows(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Gaussian tensor whose last-axis vectors have unit norm."""
    w = torch.randn(shape, generator=gen)
    return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)
