"""`ReplacementModel`: a language model paired with transcoders.

It produces what attribution needs (`docs/algorithm.md` §3, §5):

- `run(tokens)`: one clean pass; transcoder activations, reconstructions, error vectors
  `E = Y − Ŷ` and token vectors. Together with the frozen attention patterns and norm
  denominators this *is* the local replacement model: replaying the clean pass with every output
  hook set to `Ŷ + E` reproduces the logits (`frozen_replacement_logits`).
- `frozen_forward(tokens, batch_size)`: the same prompt repeated `batch_size` times in one autograd
  graph, with attention patterns and norm denominators constant and each output hook replaced by
  `skip(x) + stopgrad(Y − skip(x))`. Its forward values equal the clean pass; its gradients are
  the direct-effect paths (residual stream, attention OV, frozen norms, skip connections).
- `frozen_tangents(run, tangents)`: the same frozen model in forward mode: the change that vectors
  added at output hooks make at every input hook and at the final norm (exact directional
  derivatives, for filling in attribution columns).

`run(tokens, compact=True)` is the long-prompt form: attention is recorded as `O(P)` states instead
of `P²` patterns and only the last position's logits are kept, so nothing in the clean run grows
faster than linearly with the prompt.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.autograd import forward_ad

from circuit_atlas.errors import ModelLoadError, ShapeMismatchError
from circuit_atlas.models import ForwardRecord, FreezeSpec, LanguageModel, load_language_model
from circuit_atlas.models.adapters import HOOK_MLP_OUT_RAW
from circuit_atlas.models.frozen_hops import FrozenHops
from circuit_atlas.models.freeze import prefix_record
from circuit_atlas.models.placement import DeviceMap
from circuit_atlas.transcoders import load_transcoders
from circuit_atlas.io.dtypes import resolve_dtype


@dataclass
class ReplacementRun:
    """Everything attribution takes from the clean pass of one prompt (batch dimension dropped).

    `activations` is a coalesced sparse COO `[L,P,F]` tensor (its indices are therefore sorted by
    layer, position, feature) with no entries at the zeroed positions. `errors` are zero at the
    zeroed positions. `token_vectors[p]` is the token-embedding contribution of token p (scale
    included, position embeddings excluded). `record` is the batch-1 `ForwardRecord` whose
    attention patterns (or, for a compact run, attention states) and norm scales other passes
    can replay. `logits` is `[P,V]`, or `[1,V]` (the last position) for a compact run.
    """

    tokens: torch.Tensor
    logits: torch.Tensor
    mlp_inputs: torch.Tensor
    mlp_outputs: torch.Tensor
    activations: torch.Tensor
    reconstruction: torch.Tensor
    errors: torch.Tensor
    token_vectors: torch.Tensor
    final_hidden: torch.Tensor
    n_zeroed_positions: int
    record: ForwardRecord


@dataclass
class FrozenForward:
    """One batch-expanded frozen pass (see module docstring); all tensors share one graph.

    `embeddings` `[B,P,d]` is a leaf that requires grad; `outputs[l]` is the value at the output
    hook of layer l (`skip(x) + stopgrad(Y − skip(x))`); `inputs[l]` the input hook of layer l;
    `final_hidden` the final-norm output. Gradients of any function of `inputs` / `final_hidden`
    with respect to `outputs + [embeddings]` are direct effects. `residuals[l]` is the residual
    stream entering layer `l` (`residuals[0]` is `embeddings`, `residuals[L]` enters the final
    norm): gradients can be taken one layer at a time between consecutive residuals.
    """

    tokens: torch.Tensor
    embeddings: torch.Tensor
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]
    final_hidden: torch.Tensor
    residuals: list[torch.Tensor]

    @property
    def batch_size(self) -> int:
        return int(self.embeddings.shape[0])


@dataclass
class FrozenTangents:
    """Directional derivatives of the frozen model (`ReplacementModel.frozen_tangents`):
    `inputs[l]` `[B,P,d]` at the input hook of layer `l`, `final_hidden` `[B,P,d]` at the
    final-norm output. Batch element `b` is the change caused by the `b`-th set of added vectors."""

    inputs: list[torch.Tensor]
    final_hidden: torch.Tensor


# Positions encoded at a time in the clean run: bounds the dense `[positions, F]` activations.
ENCODE_BYTES = 64 << 20
# Active entries decoded at a time: bounds the `[entries, d]` decoder rows of a reconstruction.
DECODE_BYTES = 32 << 20


class ReplacementModel:
    """A `LanguageModel` plus a matching transcoder set (`circuit_atlas.transcoders` contract)."""

    def __init__(self, lm: LanguageModel, transcoders) -> None:
        _check_pairing(lm, transcoders)
        self.lm = lm
        self.transcoders = transcoders

    # --- plain attributes ---------------------------------------------------------------------
    @property
    def tokenizer(self):
        return self.lm.tokenizer

    @property
    def n_layers(self) -> int:
        return self.lm.n_layers

    @property
    def d_model(self) -> int:
        return self.lm.d_model

    @property
    def n_zeroed_positions(self) -> int:
        return self.lm.n_zeroed_positions

    @property
    def input_hook(self) -> str:
        return self.transcoders.input_hook

    @property
    def output_hook(self) -> str:
        return self.transcoders.output_hook

    def tokenize(self, prompt) -> torch.Tensor:
        return self.lm.tokenize(prompt)

    def _forward(self, tokens: torch.Tensor, **kwargs) -> ForwardRecord:
        return self.lm.forward(tokens, input_hook=self.input_hook, output_hook=self.output_hook, **kwargs)

    # --- clean run ------------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, tokens: torch.Tensor, *, compact: bool = False) -> ReplacementRun:
        """Clean pass over one prompt `[P]` and everything derived from it.

        `compact=True` records attention as `O(P)` states instead of `[H,P,P]` patterns and keeps
        only the last position's logits (what long-prompt attribution needs); the activations,
        errors and every other field are the same.
        """
        tokens = _one_prompt(tokens).to(self.lm.device)
        record = self._forward(tokens[None], record_hooks=[HOOK_MLP_OUT_RAW], compute_logits=not compact,
                               attention_states=compact)
        logits = record.logits[0] if not compact else self._last_logits(record.final_hidden[0, -1:])
        device = self.lm.device  # where the run's tensors gather when layers sit on several devices
        x = torch.stack([t[0].to(device) for t in record.inputs])
        y = torch.stack([t[0].to(device) for t in record.outputs])
        zeroed = min(self.n_zeroed_positions, tokens.shape[0])
        # Sparse per layer as soon as encoded: a dense [L,P,F] would not fit for large CLTs.
        sparse = [self._sparse_activations(layer, x[layer], zeroed) for layer in range(self.n_layers)]
        recon = torch.stack(
            [self._reconstruct(layer, sparse, x[layer]).to(y.dtype) for layer in range(self.n_layers)]
        )
        errors = y - recon
        errors[:, :zeroed] = 0
        return ReplacementRun(
            tokens=tokens,
            logits=logits,
            mlp_inputs=x,
            mlp_outputs=y,
            activations=torch.stack(sparse).coalesce(),
            reconstruction=recon,
            errors=errors,
            token_vectors=self.lm.token_vectors(tokens),
            final_hidden=record.final_hidden[0],
            n_zeroed_positions=zeroed,
            record=record,
        )

    def _last_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits `[n,V]` of final-norm outputs `[n,d]`, with the model's final soft-cap."""
        logits = self.lm.module(self.lm.adapter.lm_head)(hidden)
        cap = self.lm.final_softcap
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def _sparse_activations(self, layer: int, x: torch.Tensor, zeroed: int) -> torch.Tensor:
        """Sparse `[P,F]` activations of `layer`, encoded a block of positions at a time (a dense
        `[P,F]` of a 32k-feature set is 0.5 GiB at 4k tokens)."""
        n_positions, n_features = x.shape[0], self.transcoders.n_features
        step = max(1, ENCODE_BYTES // (4 * n_features))
        indices, values = [], []
        for start in range(0, n_positions, step):
            acts = self.transcoders.encode(layer, x[start : start + step]).clone()
            acts[: max(0, zeroed - start)] = 0
            block = acts.to_sparse()
            found = block.indices()
            found[0] += start
            indices.append(found)
            values.append(block.values())
        return torch.sparse_coo_tensor(torch.cat(indices, 1), torch.cat(values), (n_positions, n_features),
                                       is_coalesced=True, check_invariants=False)

    def _reconstruct(self, layer: int, sparse: list[torch.Tensor], x_in: torch.Tensor) -> torch.Tensor:
        """Ŷ[layer] from every source layer that writes to it (PLT: itself; CLT: 0..layer), a block
        of positions at a time so the gathered decoder rows stay within `DECODE_BYTES`."""
        sources = [s for s in range(layer + 1) if layer in self.transcoders.target_layers(s)]
        if not all(sparse[s].is_sparse for s in sources):
            return self.transcoders.reconstruct(layer, {s: sparse[s] for s in sources}, x_in)
        n_positions = x_in.shape[0]
        counts = sum(torch.bincount(sparse[s].indices()[0], minlength=n_positions) for s in sources)
        limit = max(1, DECODE_BYTES // (4 * self.d_model))
        bounds, total, start = [], 0, 0
        for position, count in enumerate(counts.tolist()):
            if total + count > limit and position > start:
                bounds.append((start, position))
                start, total = position, 0
            total += count
        bounds.append((start, n_positions))
        if len(bounds) == 1:
            return self.transcoders.reconstruct(layer, {s: sparse[s] for s in sources}, x_in)
        parts = []
        for lo, hi in bounds:
            acts = {s: _position_slice(sparse[s], lo, hi) for s in sources}
            parts.append(self.transcoders.reconstruct(layer, acts, x_in[lo:hi]))
        return torch.cat(parts)

    # --- frozen passes --------------------------------------------------------------------------
    def frozen_forward(
        self, tokens: torch.Tensor, batch_size: int, *, run: ReplacementRun | None = None,
        length: int | None = None,
    ) -> FrozenForward:
        """The prompt repeated `batch_size` times through the local replacement model, in one graph.

        Attention patterns and norm denominators are replayed (as constants) from the clean pass
        of `run` (computed here if not given), so the batch pass skips the QK products.
        `length` runs only the first `length` positions (replaying the clean pass's prefix):
        targets at early positions need nothing later, and attention cost grows with length².
        """
        tokens = _one_prompt(tokens).to(self.lm.device)
        if batch_size < 1:
            raise ShapeMismatchError(f"batch_size must be at least 1, got {batch_size}")
        if run is None:
            with torch.no_grad():
                clean = self._forward(tokens[None], compute_logits=False, record_hooks=[HOOK_MLP_OUT_RAW])
        else:
            if not torch.equal(run.tokens.to(tokens.device), tokens):
                raise ShapeMismatchError("frozen_forward: `run` was computed for different tokens")
            clean = run.record
        if length is not None and length != tokens.shape[0]:
            clean = prefix_record(clean, length)
            tokens = tokens[:length]
        tc = self.transcoders

        def freeze_mlp(layer: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            skip = tc.skip(layer, x)
            if skip is None:
                return y.detach().requires_grad_(True)
            skip = skip.to(y.dtype)
            return skip + (y - skip).detach()

        def leaf(emb: torch.Tensor) -> torch.Tensor:
            return emb.detach().requires_grad_(True)

        raw = clean.hooks.get(HOOK_MLP_OUT_RAW)
        mlp_values = None if raw is None else dict(enumerate(raw))
        with torch.enable_grad():
            record = self._forward(
                tokens[None].expand(batch_size, -1),
                freeze=FreezeSpec.replayed(clean),
                output_edit=freeze_mlp,
                embedding_edit=leaf,
                record_internals=False,
                compute_logits=False,
                mlp_values=mlp_values,
                record_residuals=True,
            )
        return FrozenForward(
            tokens=tokens,
            embeddings=record.embeddings,
            inputs=record.inputs,
            outputs=record.outputs,
            final_hidden=record.final_hidden,
            residuals=record.residuals,
        )

    def frozen_hops(self, run: ReplacementRun) -> FrozenHops | None:
        """Low-rank backward hops through the frozen model of `run` (the one `frozen_forward`
        differentiates): the gradient entering a target's layer, and through the layers below it
        while that is cheaper than a dense backward (`models/frozen_hops.py`). None where the
        model's layout has no closed form (then autograd takes every hop)."""
        has_skip = self.transcoders.has_skip
        return FrozenHops.of(self.lm, run.record, self.input_hook, self.output_hook, lambda layer: has_skip)

    @torch.no_grad()
    def frozen_tangents(
        self, run: ReplacementRun, tangents: dict[int, torch.Tensor], *, length: int | None = None,
    ) -> FrozenTangents:
        """Forward-mode derivatives of the frozen model: `tangents[l]` `[B,P,d]` are vectors added
        at the output hook of layer `l` (batch element `b` is one perturbation); returned are the
        changes they cause at every input hook and at the final norm, computed with dual numbers
        (exact, no difference of two passes). The frozen model is the one `frozen_forward`
        differentiates: replayed patterns and norm scales, MLPs reduced to their skip path.
        `length` runs over the first `length` positions only.
        """
        if not tangents:
            raise ShapeMismatchError("frozen_tangents needs at least one layer's tangents")
        batch = next(iter(tangents.values())).shape[0]
        clean = run.record
        tokens = run.tokens
        if length is not None and length != tokens.shape[0]:
            clean = prefix_record(clean, length)
            tokens = tokens[:length]
        tc = self.transcoders
        raw = clean.hooks.get(HOOK_MLP_OUT_RAW)
        mlp_values = None if raw is None else dict(enumerate(raw))

        def perturb(layer: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            skip = tc.skip(layer, x)
            if skip is None:
                value = y.detach()
            else:
                skip = skip.to(y.dtype)
                value = skip + (y - skip).detach()
            if layer in tangents:
                added = tangents[layer].to(device=y.device, dtype=y.dtype)
                value = value + forward_ad.make_dual(torch.zeros_like(added), added)
            return value

        with forward_ad.dual_level():
            record = self._forward(
                tokens[None].expand(batch, -1),
                freeze=FreezeSpec.replayed(clean),
                output_edit=perturb,
                record_internals=False,
                compute_logits=False,
                mlp_values=mlp_values,
            )

            def tangent_of(value: torch.Tensor) -> torch.Tensor:
                found = forward_ad.unpack_dual(value).tangent
                return torch.zeros_like(value) if found is None else found

            inputs = [tangent_of(t) for t in record.inputs]
            final = tangent_of(record.final_hidden)
        return FrozenTangents(inputs=inputs, final_hidden=final)

    @torch.no_grad()
    def frozen_replacement_logits(
        self, run: ReplacementRun, activations: torch.Tensor | None = None, *, with_errors: bool = True
    ) -> torch.Tensor:
        """Logits `[P,V]` of the local replacement model: patterns and norm scales replayed from
        the clean pass, every output hook set to `Ŷ(activations) + E` (the real MLP output at the
        zeroed positions). With the clean activations this reproduces `run.logits`; with edited
        activations `[L,P,F]` (dense or sparse) it is a fully constrained intervention.
        """
        acts = run.activations if activations is None else activations
        dense = list(acts.to_dense() if acts.is_sparse else acts)
        zeroed = run.n_zeroed_positions

        def replace(layer: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            recon = self._reconstruct(layer, dense, x[0]).to(y.dtype)
            if with_errors:
                recon = recon + run.errors[layer]
            recon[:zeroed] = run.mlp_outputs[layer, :zeroed]
            return recon[None]

        record = self._forward(
            run.tokens[None], freeze=FreezeSpec.replayed(run.record), output_edit=replace,
            record_internals=False,
        )
        return record.logits[0]

    def __repr__(self) -> str:
        return f"ReplacementModel({self.lm!r}, transcoders={self.transcoders!r})"


def _position_slice(acts: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows `start:stop` of a coalesced sparse `[P,F]` tensor (entries are sorted by position)."""
    positions = acts.indices()[0]
    lo = int(torch.searchsorted(positions, torch.tensor(start, device=positions.device)))
    hi = int(torch.searchsorted(positions, torch.tensor(stop, device=positions.device)))
    indices = acts.indices()[:, lo:hi].clone()
    indices[0] -= start
    return torch.sparse_coo_tensor(indices, acts.values()[lo:hi], (stop - start, acts.shape[1]),
                                   is_coalesced=True, check_invariants=False)


def _one_prompt(tokens: torch.Tensor) -> torch.Tensor:
    tokens = torch.as_tensor(tokens)
    if tokens.dim() == 2 and tokens.shape[0] == 1:
        tokens = tokens[0]
    if tokens.dim() != 1:
        raise ShapeMismatchError(f"expected token ids [P] for one prompt, got shape {tuple(tokens.shape)}")
    return tokens


def _check_pairing(lm: LanguageModel, tc) -> None:
    """Transcoders must have the model's layer count and width, and hooks the model provides."""
    if int(tc.n_layers) != lm.n_layers or int(tc.d_model) != lm.d_model:
        label = getattr(tc, "scan", None) or type(tc).__name__
        raise ShapeMismatchError(
            f"transcoders {label!r} have n_layers={tc.n_layers}, d_model={tc.d_model}, but model "
            f"{lm.name!r} has n_layers={lm.n_layers}, d_model={lm.d_model}"
        )
    lm.check_hooks(tc.input_hook, tc.output_hook)


def load(
    model: str | os.PathLike | LanguageModel,
    transcoders,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    lazy_encoder: bool = False,
    device_map: DeviceMap | None = None,
    offload_folder: str | os.PathLike | None = None,
) -> ReplacementModel:
    """Pair a model (hub id, local dir or `LanguageModel`) with transcoders (reference string or
    a loaded set), on one device and dtype. `load("demo", "demo")` is the bundled demo model with
    its cross-layer transcoders (`"demo-plt"`: per-layer ones).

    `lazy_encoder=True` keeps the encoders of a loaded reference on disk, read one layer at a
    time (see `load_transcoders`); it does not apply to an already loaded set.

    `device_map` / `offload_folder` (instead of `device`) spread a model that does not fit one
    device over several, with accelerate (`load_language_model`); the transcoders then live on
    the model's first device, where attribution gathers its results."""
    torch_dtype = resolve_dtype(dtype)
    if isinstance(model, LanguageModel):
        if device_map is not None or offload_folder is not None:
            raise ModelLoadError("device_map and offload_folder apply when loading a model by "
                                 "name or path, not to an already loaded LanguageModel")
        lm = model.to(device=device, dtype=torch_dtype)
    else:
        lm = load_language_model(model, device=device, dtype=torch_dtype, device_map=device_map,
                                 offload_folder=offload_folder)
    if isinstance(transcoders, (str, os.PathLike)):
        transcoders = load_transcoders(str(transcoders), device=lm.device, dtype=lm.dtype,
                                       lazy_encoder=lazy_encoder)
    elif hasattr(transcoders, "to"):
        transcoders = transcoders.to(device=lm.device, dtype=lm.dtype)
    return ReplacementModel(lm, transcoders)
