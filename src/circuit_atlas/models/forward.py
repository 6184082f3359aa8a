"""One instrumented forward pass through a transformers model.

The transformers forward runs unchanged; we attach PyTorch hooks (removed afterwards) that
read the hook points, replace norm outputs by our frozen-denominator computation, let callers
edit the output-hook value and the embeddings, and route attention through `attention.py`.
Keeping transformers' own forward means rotary embeddings, masks, soft-caps and new releases
stay transformers' job; this module only knows module paths from the `FamilyAdapter`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack

import torch
from torch import nn

from circuit_atlas.errors import ShapeMismatchError
from circuit_atlas.models import adapters as A
from circuit_atlas.models.adapters import FamilyAdapter
from circuit_atlas.models.attention import AttentionState, frozen_attention, state_from_live, use_attention
from circuit_atlas.models.freeze import DETACH, LIVE, REPLAY, ForwardRecord, FreezeSpec, broadcast_replay
from circuit_atlas.models.norms import apply_norm, inverse_scale
from circuit_atlas.models.placement import execution_device, replaced_forward

OutputEdit = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
EmbeddingEdit = Callable[[torch.Tensor], torch.Tensor]


class _Pass:
    """State of one pass: the hooks write into it, `run` turns it into a `ForwardRecord`.

    Everything after the model, its adapter and its norms is keyword-only: the options are many
    and of similar types, and a call that names them cannot swap two of them unnoticed."""

    def __init__(
        self,
        hf_model: nn.Module,
        adapter: FamilyAdapter,
        norms: dict[str, tuple[nn.Module, str]],
        *,
        input_hook: str,
        output_hook: str,
        freeze: FreezeSpec,
        output_edit: OutputEdit | None = None,
        embedding_edit: EmbeddingEdit | None = None,
        record_hooks: Sequence[str] = (),
        record_internals: bool = False,
        mlp_values: Mapping[int, torch.Tensor] | None = None,
        attention_states: bool = False,
        record_residuals: bool = False,
    ) -> None:
        self.hf_model, self.adapter, self.norms = hf_model, adapter, norms
        self.input_hook, self.output_hook = input_hook, output_hook
        self.freeze, self.output_edit, self.embedding_edit = freeze, output_edit, embedding_edit
        self.record_hooks = tuple(record_hooks)
        self.record_internals = record_internals
        self.mlp_values = mlp_values
        self.attention_states = attention_states
        self.record_residuals = record_residuals
        self.batch = 0
        self.embeddings: torch.Tensor | None = None
        self.final_hidden: torch.Tensor | None = None
        self.inputs: dict[int, torch.Tensor] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.hooks: dict[str, dict[int, torch.Tensor]] = {name: {} for name in self.record_hooks}
        self.patterns: dict[int, torch.Tensor] = {}
        self.states: dict[int, AttentionState] = {}
        self.residuals: dict[int, torch.Tensor] = {}
        self.scales: dict[str, torch.Tensor] = {}
        self.scale_axes: dict[str, int] = {}
        self.n_positions = 0
        self.normalized: dict[str, torch.Tensor] = {}
        # The first device (the embeddings'): with a device_map, layers sit on several devices.
        self.home = execution_device(adapter.get(hf_model, adapter.embed_tokens))

    # --- attention (PatternSink) ---------------------------------------------------------------
    def pattern(self, layer: int, compute, shape: tuple[int, ...]) -> torch.Tensor:
        mode = self.freeze.attention
        if mode == REPLAY:
            saved = self.freeze.replay_from.attention_patterns.get(layer)
            if saved is None:
                raise ShapeMismatchError(f"replay record has no attention pattern for layer {layer}")
            pattern = broadcast_replay(saved, shape[0], f"attention pattern of layer {layer}")
            if tuple(pattern.shape[1:]) != tuple(shape[1:]):
                raise ShapeMismatchError(
                    f"replayed attention pattern of layer {layer} has shape {tuple(saved.shape)}, "
                    f"this pass needs {tuple(shape)} (different prompt length?)"
                )
        else:
            pattern = compute()
            if mode == DETACH:
                pattern = pattern.detach()
        if self.record_internals:
            self.patterns[layer] = pattern
        return pattern

    def attend(self, layer: int, query, key, value, mask, scaling, softcap):
        """The whole attention of `layer` from an `O(P)` state, or None for the pattern path.

        Replay uses the record's state when it has one. A pass asked for `attention_states`
        computes live attention a block of rows at a time and records the state; its output
        follows the frozen pattern (gradient only through the values), so this applies to
        detached and no-grad passes, not to live passes that differentiate through patterns.
        """
        mode = self.freeze.attention
        if mode == REPLAY:
            state = self.freeze.replay_from.attention_states.get(layer)
            if state is None:
                return None
            if state.n_positions != query.shape[2] or state.n_heads != query.shape[1]:
                raise ShapeMismatchError(
                    f"replayed attention state of layer {layer} covers {state.n_positions} positions "
                    f"and {state.n_heads} heads, this pass has query shape {tuple(query.shape)}"
                )
            return frozen_attention(value, state), None
        if not self.attention_states:
            return None
        live_gradient = mode == LIVE and torch.is_grad_enabled() and (query.requires_grad or key.requires_grad)
        float_mask = mask is not None and mask.dtype != torch.bool
        if query.shape[0] != 1 or live_gradient or float_mask:
            return None
        with torch.no_grad():
            output, state = state_from_live(query, key, value, mask, scaling, softcap)
        if torch.is_grad_enabled() and value.requires_grad:
            output = frozen_attention(value, state)
        if self.record_internals:
            self.states[layer] = state
        return output, None

    # --- norms -----------------------------------------------------------------------------------
    def _norm_forward(self, path: str, module: nn.Module, kind: str):
        """The norm's forward with our frozen-denominator computation. It replaces the module's
        forward (rather than hooking its output) so that a module accelerate offloaded still has
        its weights loaded while this runs (`placement.replaced_forward`)."""

        def forward(*args, **kwargs):
            x = _first(args, kwargs)
            mode = self.freeze.norms
            if mode == REPLAY:
                saved = self.freeze.replay_from.norm_scales.get(path)
                if saved is None:
                    raise ShapeMismatchError(f"replay record has no norm scale for {path!r}")
                inv = broadcast_replay(saved, x.shape[0], f"norm scale of {path!r}")
                if inv.shape[1:] != x.shape[1:-1] + (1,):
                    raise ShapeMismatchError(
                        f"replayed norm scale of {path!r} has shape {tuple(inv.shape)}, "
                        f"input has {tuple(x.shape)}"
                    )
            else:
                inv = inverse_scale(kind, module, x)
                if mode == DETACH:
                    inv = inv.detach()
            result = apply_norm(kind, module, x, inv)
            self.normalized[path] = result.normalized
            if self.record_internals:
                self.scales[path] = inv
                self.scale_axes[path] = _position_axis(x, self.n_positions)
            return result.output

        return forward

    # --- hook points ------------------------------------------------------------------------------
    def _capture(self, name: str, layer: int, value: torch.Tensor) -> None:
        if name == self.input_hook:
            self.inputs[layer] = value
        if name in self.hooks:
            self.hooks[name][layer] = value

    def _output(self, name: str, layer: int, value: torch.Tensor) -> torch.Tensor:
        """At the output hook: apply the caller's edit and remember what flows on."""
        if name == self.output_hook:
            if self.output_edit is not None:
                # Edits see tensors on the model's first device, where callers keep theirs; the
                # result goes back to this layer's device (one device: both moves do nothing).
                here = value.device
                value = self.output_edit(layer, self.inputs[layer].to(self.home),
                                         value.to(self.home)).to(here)
            self.outputs[layer] = value
        if name in self.hooks:
            self.hooks[name][layer] = value
        return value

    def install(self, stack: ExitStack) -> None:
        """Register every hook; `stack` removes them. Norm modules compute with frozen
        denominators, so every hook on them sees that output."""
        ad, model = self.adapter, self.hf_model

        def keep(handle) -> None:
            stack.callback(handle.remove)

        for path, (module, kind) in self.norms.items():
            stack.enter_context(replaced_forward(module, self._norm_forward(path, module, kind)))

        layers = ad.layer_modules(model)
        keep(layers[0].register_forward_pre_hook(self._embedding_hook, with_kwargs=True))
        for layer in range(len(layers)):
            self._install_layer(layer, keep)
        final = ad.get(model, ad.final_norm)
        keep(final.register_forward_hook(lambda m, a, o: self._set_final(o)))
        if self.record_residuals:
            for layer in range(1, len(layers)):
                keep(layers[layer].register_forward_pre_hook(self._residual_hook(layer), with_kwargs=True))
            keep(final.register_forward_pre_hook(self._residual_hook(len(layers)), with_kwargs=True))

    def _residual_hook(self, layer: int):
        def hook(module, args, kwargs):
            self.residuals[layer] = _first(args, kwargs)

        return hook

    def _install_layer(self, layer: int, keep) -> None:
        ad, model = self.adapter, self.hf_model
        pre_norm = ad.layer_part(model, layer, ad.layer_pre_mlp_norm)
        norm_path = _path_of(model, pre_norm)
        mlp = ad.layer_part(model, layer, ad.layer_mlp)
        post_norm = (
            ad.layer_part(model, layer, ad.layer_post_mlp_norm) if ad.layer_post_mlp_norm else None
        )

        def resid_mid(module, args, kwargs):
            self._capture(A.HOOK_RESID_MID, layer, _first(args, kwargs))

        def normalized(module, args, output):
            value = self.normalized[norm_path]
            self._capture(A.HOOK_LN2_NORMALIZED, layer, value.to(output.dtype))

        def mlp_in(module, args, kwargs):
            self._capture(A.HOOK_MLP_IN, layer, _first(args, kwargs))

        def mlp_out(module, args, output):
            output = self._output(A.HOOK_MLP_OUT_RAW, layer, output)
            if post_norm is None:
                output = self._output(A.HOOK_MLP_OUT, layer, output)
            return output

        if self.mlp_values is not None:
            self._bypass_mlp(mlp, self.mlp_values[layer], keep_callback=keep)
        keep(pre_norm.register_forward_pre_hook(resid_mid, with_kwargs=True))
        keep(pre_norm.register_forward_hook(normalized))
        keep(mlp.register_forward_pre_hook(mlp_in, with_kwargs=True))
        keep(mlp.register_forward_hook(mlp_out))
        if post_norm is not None:
            keep(post_norm.register_forward_hook(lambda m, a, o: self._output(A.HOOK_MLP_OUT, layer, o)))

    def _bypass_mlp(self, mlp: nn.Module, value: torch.Tensor, keep_callback) -> None:
        """Make `mlp` return a known output instead of computing it (its hooks still run).

        The frozen pass cuts every MLP out of the gradient anyway; not running it saves its
        compute and, above all, the `[B,P,d_mlp]` tensors autograd would keep for it.
        """
        batch = self.batch
        previous = mlp.__dict__.get("forward")  # a wrapper someone installed (e.g. accelerate's hooks)

        def forward(*args, **kwargs):
            # On the device of the MLP's input: with a device_map, layers sit on several devices.
            return value.detach().expand(batch, *value.shape[1:]).to(_first(args, kwargs).device)

        def restore() -> None:
            if previous is None:
                mlp.__dict__.pop("forward", None)
            else:
                mlp.forward = previous

        mlp.forward = forward
        keep_callback(_Removal(restore))

    def _embedding_hook(self, module, args, kwargs):
        """Residual stream entering layer 0: record it and let the caller replace it."""
        if args:
            emb = args[0]
        else:
            emb = kwargs["hidden_states"]
        if self.embedding_edit is not None:
            emb = self.embedding_edit(emb)
        self.embeddings = emb
        self.residuals[0] = emb
        if args:
            return (emb, *args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = emb
        return args, kwargs

    def _check_mlp_values(self, tokens: torch.Tensor) -> None:
        n_layers = len(self.adapter.layer_modules(self.hf_model))
        for layer in range(n_layers):
            value = self.mlp_values.get(layer)
            if value is None or value.shape[-2] != tokens.shape[1] or value.shape[0] not in (1, self.batch):
                shape = None if value is None else tuple(value.shape)
                raise ShapeMismatchError(
                    f"mlp_values[{layer}] has shape {shape}; expected [1 or {self.batch}, "
                    f"{tokens.shape[1]}, d_model]"
                )

    def _set_final(self, output: torch.Tensor) -> None:
        self.final_hidden = output

    # --- running --------------------------------------------------------------------------------
    def run(self, tokens: torch.Tensor, compute_logits: bool) -> ForwardRecord:
        self.batch, self.n_positions = tokens.shape[0], tokens.shape[1]
        if self.mlp_values is not None:
            self._check_mlp_values(tokens)
        with ExitStack() as stack:
            self.install(stack)
            stack.enter_context(use_attention(self.hf_model, self))
            if compute_logits:
                logits = self.hf_model(input_ids=tokens, use_cache=False).logits
            else:
                base = self.adapter.get(self.hf_model, self.adapter.base)
                base(input_ids=tokens, use_cache=False)
                logits = None
        n_layers = len(self.adapter.layer_modules(self.hf_model))
        return ForwardRecord(
            tokens=tokens,
            embeddings=self.embeddings,
            inputs=[self.inputs[l] for l in range(n_layers)],
            outputs=[self.outputs[l] for l in range(n_layers)],
            final_hidden=self.final_hidden,
            logits=logits,
            attention_patterns=self.patterns,
            norm_scales=self.scales,
            norm_position_axes=self.scale_axes,
            hooks={name: [vals[l] for l in range(n_layers)] for name, vals in self.hooks.items()},
            attention_states=self.states,
            residuals=[self.residuals[l] for l in range(n_layers + 1)] if self.record_residuals else [],
        )


def _position_axis(x: torch.Tensor, n_positions: int) -> int:
    """Which axis of a norm's input `x` holds the positions: the one of size `n_positions`
    between batch and features. Per-head q/k norms see `[B,P,H,hd]` or, transposed, `[B,H,P,hd]`;
    when there are as many heads as positions the larger stride decides, since the heads were
    split off the projection's last axis and so sit inside a position's block of memory."""
    candidates = [axis for axis in range(1, x.dim() - 1) if x.shape[axis] == n_positions]
    if not candidates:
        return 1
    return max(candidates, key=x.stride)


class _Removal:
    """Adapter so `keep` (which stores `handle.remove`) can also undo a monkeypatch."""

    def __init__(self, undo) -> None:
        self.remove = undo


def _first(args, kwargs) -> torch.Tensor:
    return args[0] if args else next(iter(kwargs.values()))


def _path_of(root: nn.Module, target: nn.Module) -> str:
    for path, module in root.named_modules():
        if module is target:
            return path
    raise KeyError("module not found under the model")


__all__ = ["OutputEdit", "EmbeddingEdit"]
