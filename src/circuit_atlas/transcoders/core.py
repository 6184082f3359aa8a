"""`Transcoders`: per-layer (PLT) and cross-layer (CLT) transcoders behind one interface.

A PLT set is treated as the special case of a CLT whose source layer `l` writes only to target
layer `l`. Every method works for both kinds through `target_layers(source)` /
`source_layers(target)`, so callers (replacement model, attribution) need not branch on the kind.

Layout in memory (`docs/formats.md` §1, one row per feature, as circuit-tracer holds it):
- `W_enc[l]` `[F, d]`; pre-activation `x · W_encᵀ + b_enc`. Held by an `EncoderStore`, possibly
  read from disk on each use (lazy encoders).
- decoder of source `l`: `[F, T_l, d]`, `T_l = 1` (PLT) or `L − l` (CLT); offset `j` writes to
  target layer `l + j`. Held by a `DecoderStore`, possibly lazily mapped from disk.
- `b_dec[l]` `[d]`: decoder bias of *target* layer `l`, added once to its reconstruction.
- `W_skip[l]` `[d_out, d_in]`, applied as `x · W_skipᵀ` (circuit-tracer's PLT convention).
  Loaders of formats that store `[d_in, d_out]` (GemmaScope-2 PLT and CLT skips, §6) transpose
  on load, so one convention holds in memory for both kinds.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch

from circuit_atlas.errors import ShapeMismatchError, TranscoderFormatError
from circuit_atlas.transcoders.activations import apply_activation, normalize_activation_name
from circuit_atlas.transcoders.circuit_tracer_format import save_circuit_tracer
from circuit_atlas.transcoders.decoders import DecoderStore, EagerDecoder
from circuit_atlas.transcoders.encoders import EagerEncoder, EncoderStore
from circuit_atlas.transcoders.native import save_native
from circuit_atlas.transcoders.parts import KINDS
from circuit_atlas.transcoders.validation import all_finite


class Transcoders:
    """A full set of transcoders for one model: encoders, decoders, biases, optional skips."""

    def __init__(
        self,
        kind: str,
        *,
        W_enc: Sequence[torch.Tensor | EncoderStore],
        b_enc: Sequence[torch.Tensor],
        b_dec: Sequence[torch.Tensor],
        W_dec: Sequence[torch.Tensor | DecoderStore],
        threshold: Sequence[torch.Tensor] | None = None,
        W_skip: Sequence[torch.Tensor] | None = None,
        activation: str | None = None,
        k: int | None = None,
        input_hook: str = "mlp.hook_in",
        output_hook: str = "mlp.hook_out",
        scan: str | None = None,
        model_name: str | None = None,
        origins: Sequence[str] | None = None,
    ) -> None:
        """Assemble a set from per-layer tensors (loaders and trainers both end here).

        `W_enc[l]` may be an `[F, d]` tensor or an `EncoderStore` (lazy sets); `W_dec[l]` a
        tensor (`[F, d]` for a PLT, `[F, L−l, d]` for a CLT) or a `DecoderStore`. `activation`
        defaults to JumpReLU when thresholds are given, else ReLU.
        `origins[l]` names the file of layer `l`, used in error messages.
        """
        if kind not in KINDS:
            raise TranscoderFormatError(f"kind must be 'plt' or 'clt', got {kind!r}")
        self.kind = kind
        self.input_hook, self.output_hook = input_hook, output_hook
        self.model_name = model_name
        self._origins = list(origins) if origins is not None else None
        self._encoders: list[EncoderStore] = [
            EagerEncoder(w, f"W_enc[{i}]") if isinstance(w, torch.Tensor) else w
            for i, w in enumerate(W_enc)
        ]
        self._b_enc = list(b_enc)
        self._b_dec = list(b_dec)
        self._threshold = list(threshold) if threshold is not None else None
        self._W_skip = list(W_skip) if W_skip is not None else None
        self._decoders: list[DecoderStore] = [
            EagerDecoder(w, f"W_dec[{i}]") if isinstance(w, torch.Tensor) else w
            for i, w in enumerate(W_dec)
        ]
        self.n_layers = len(self._encoders)
        if self.n_layers == 0:
            raise TranscoderFormatError("a transcoder set needs at least one layer")
        self.n_features, self.d_model = (int(s) for s in self._encoders[0].shape)
        self.activation_name = self._pick_activation(activation)
        self.k = self._check_k(k)
        self.scan = scan
        self._check_shapes()

    # ------------------------------------------------------------------ construction checks

    def _where(self, layer: int) -> str:
        return self._origins[layer] if self._origins else f"layer {layer}"

    def _pick_activation(self, activation: str | None) -> str:
        if activation is None:
            return "jumprelu" if self._threshold is not None else "relu"
        name = normalize_activation_name(activation)
        if name == "jumprelu" and self._threshold is None:
            raise TranscoderFormatError("activation 'jumprelu' needs a threshold for every layer")
        if name != "jumprelu" and self._threshold is not None:
            raise TranscoderFormatError(
                f"activation {name!r} conflicts with the threshold tensors present "
                f"(e.g. in {self._where(0)}); thresholds imply JumpReLU"
            )
        return name

    def _check_k(self, k: int | None) -> int | None:
        if self.activation_name != "topk":
            return None
        if k is None or isinstance(k, bool) or int(k) != k or not 0 < int(k) <= self.n_features:
            raise TranscoderFormatError(
                f"TopK needs an integer k in 1..{self.n_features} (n_features), got {k!r}"
            )
        return int(k)

    def _check_shapes(self) -> None:
        L, F, d = self.n_layers, self.n_features, self.d_model
        per_layer = {"b_enc": self._b_enc, "b_dec": self._b_dec, "W_dec": self._decoders}
        if self._threshold is not None:
            per_layer["threshold"] = self._threshold
        if self._W_skip is not None:
            per_layer["W_skip"] = self._W_skip
        for name, values in per_layer.items():
            if len(values) != L:
                raise ShapeMismatchError(f"{name} has {len(values)} layers, W_enc has {L}")
        for layer in range(L):
            expect = {"W_enc": (self._encoders[layer], (F, d)), "b_enc": (self._b_enc[layer], (F,)),
                      "b_dec": (self._b_dec[layer], (d,))}
            if self._threshold is not None:
                expect["threshold"] = (self._threshold[layer], (F,))
            if self._W_skip is not None:
                expect["W_skip"] = (self._W_skip[layer], (d, d))
            for name, (tensor, shape) in expect.items():
                if tuple(tensor.shape) != shape:
                    raise ShapeMismatchError(
                        f"{self._where(layer)}: {name} has shape {list(tensor.shape)}, expected "
                        f"{list(shape)} (n_features={F}, d_model={d} from layer 0)"
                    )
            self._check_decoder(layer)

    def _check_decoder(self, layer: int) -> None:
        dec = self._decoders[layer]
        targets = len(self.target_layers(layer))
        got = (dec.n_features, dec.n_targets, dec.d_model)
        if got != (self.n_features, targets, self.d_model):
            raise ShapeMismatchError(
                f"{dec.description} ({self._where(layer)}): decoder is [F={got[0]}, "
                f"targets={got[1]}, d={got[2]}], expected [F={self.n_features}, "
                f"targets={targets}, d={self.d_model}]"
            )

    # ------------------------------------------------------------------ properties

    @property
    def device(self) -> torch.device:
        return self._encoders[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self._encoders[0].dtype

    @property
    def has_skip(self) -> bool:
        return self._W_skip is not None

    @property
    def lazy_decoder(self) -> bool:
        return any(dec.is_lazy for dec in self._decoders)

    @property
    def lazy_encoder(self) -> bool:
        return any(enc.is_lazy for enc in self._encoders)

    def encoder_weight(self, layer: int) -> torch.Tensor:
        """`W_enc[layer]` `[F, d]`.

        Eager sets return the held tensor itself (a view: in-place edits change the set). Lazy
        sets return a fresh tensor read from disk on every call: editing it changes nothing, and
        holding on to it keeps that layer's encoder in memory.
        """
        return self._encoders[self._layer(layer)].weight()

    def encoder_bias(self, layer: int) -> torch.Tensor:
        return self._b_enc[self._layer(layer)]

    def decoder_bias(self, layer: int) -> torch.Tensor:
        """`b_dec` of target layer `layer` `[d]`."""
        return self._b_dec[self._layer(layer)]

    def threshold(self, layer: int) -> torch.Tensor | None:
        return None if self._threshold is None else self._threshold[self._layer(layer)]

    def skip_weight(self, layer: int) -> torch.Tensor | None:
        """`W_skip[layer]` `[d_out, d_in]`, applied as `x · W_skipᵀ`; None without skips."""
        return None if self._W_skip is None else self._W_skip[self._layer(layer)]

    def decoder_store(self, layer: int) -> DecoderStore:
        return self._decoders[self._layer(layer)]

    def encoder_store(self, layer: int) -> EncoderStore:
        return self._encoders[self._layer(layer)]

    # ------------------------------------------------------------------ layer bookkeeping

    def _layer(self, layer: int, what: str = "layer") -> int:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise ShapeMismatchError(f"{what} {layer!r} out of range 0..{self.n_layers - 1}")
        return layer

    def target_layers(self, source_layer: int) -> range:
        """Layers whose output hook the features of `source_layer` write to."""
        source_layer = self._layer(source_layer, "source_layer")
        return range(source_layer, source_layer + 1 if self.kind == "plt" else self.n_layers)

    def source_layers(self, target_layer: int) -> range:
        """Layers whose features write to the output hook of `target_layer`."""
        target_layer = self._layer(target_layer, "target_layer")
        return range(target_layer if self.kind == "plt" else 0, target_layer + 1)

    # ------------------------------------------------------------------ encoder side

    def pre_activation(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """`x · W_encᵀ + b_enc` for `x` `[..., d]` at the input hook of `layer`.

        A lazy encoder is read for this one call and released afterwards.
        """
        layer = self._layer(layer)
        self._check_width(x, "x")
        weight = self._encoders[layer].weight()
        return torch.nn.functional.linear(x.to(self.dtype), weight, self._b_enc[layer])

    def activate(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """Apply this set's activation to pre-activations `h` `[..., F]` of `layer`."""
        layer = self._layer(layer)
        if h.shape[-1] != self.n_features:
            raise ShapeMismatchError(f"h has {h.shape[-1]} features, transcoders have {self.n_features}")
        return apply_activation(self.activation_name, h, self.threshold(layer), self.k)

    def encode(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Dense feature activations `[..., F]`; zeroing special positions is the caller's job."""
        return self.activate(layer, self.pre_activation(layer, x))

    def encode_entries(self, layer: int, x: torch.Tensor, positions: torch.Tensor,
                       features: torch.Tensor) -> torch.Tensor:
        """Activations `[n]` of the (position, feature) pairs, for `x` `[P, d]` of `layer`.

        Why: interventions need a handful of activations per layer and generated token. With lazy
        encoders a full `encode` reads the whole layer each time, while ReLU and JumpReLU act
        feature by feature, so reading those encoder rows suffices (equal up to float rounding).
        Eager sets (and TopK, which compares all features of a position) encode the positions in
        full, so values match `encode` bit for bit.
        """
        layer = self._layer(layer)
        positions, features = positions.to(x.device), self._features(features).to(self.device)
        if self.activation_name == "topk" or not self.lazy_encoder:
            acts = self.encode(layer, x)[positions]
            return acts[torch.arange(positions.numel(), device=acts.device), features.to(acts.device)]
        rows = self.encoder_rows(layer, features)
        h = (x[positions].to(self.dtype) * rows).sum(-1) + self._b_enc[layer][features]
        threshold = self.threshold(layer)
        return apply_activation(self.activation_name, h,
                                None if threshold is None else threshold[features], self.k)

    def encoder_rows(self, layer: int, features: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Encoder vectors `[n, d]` of the given features of `layer` (lazy sets read only these rows)."""
        layer = self._layer(layer)
        idx = self._features(features)
        return self._encoders[layer].rows(idx)

    def _check_width(self, x: torch.Tensor, name: str) -> None:
        if x.shape[-1] != self.d_model:
            raise ShapeMismatchError(f"{name} has width {x.shape[-1]}, transcoders expect d_model={self.d_model}")

    def _features(self, features: torch.Tensor | Sequence[int]) -> torch.Tensor:
        idx = torch.as_tensor(features, dtype=torch.long).reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.n_features):
            bad = idx[(idx < 0) | (idx >= self.n_features)][0]
            raise ShapeMismatchError(f"feature index {int(bad)} out of range 0..{self.n_features - 1}")
        return idx

    # ------------------------------------------------------------------ decoder side

    def decoder_rows(self, source_layer: int, features: torch.Tensor | Sequence[int],
                     target_layer: int) -> torch.Tensor:
        """Decoder vectors `[n, d]` that `features` of `source_layer` write into `target_layer`.

        Lazy sets read just these rows from the mapped file.
        """
        targets = self.target_layers(source_layer)
        if target_layer not in targets:
            raise ShapeMismatchError(
                f"features of layer {source_layer} write to layers {targets.start}.."
                f"{targets.stop - 1}, not to target_layer {target_layer!r}"
            )
        rows = self._decoders[source_layer].rows(self._features(features), target_layer - source_layer)
        return rows.to(device=self.device, dtype=self.dtype)

    def decoder_rows_into(self, source_layer: int, features: torch.Tensor | Sequence[int], target_layer: int,
                          out: torch.Tensor) -> torch.Tensor:
        """`decoder_rows` written into `out` `[n, d]` (returned), a buffer the caller reuses.

        On CPU a fresh tensor of tens of MB costs its page faults on first touch, more than the
        gather itself; callers gathering many such blocks (attribution) keep one buffer instead.
        In-memory decoders of `out`'s dtype and device are gathered straight into it.
        """
        store = self._decoders[source_layer]
        weight = getattr(store, "weight", None)
        if (isinstance(store, EagerDecoder) and weight.dtype == out.dtype == self.dtype and weight.device == out.device
                and target_layer in self.target_layers(source_layer)):
            idx = self._features(features).to(weight.device)
            return torch.index_select(weight[:, target_layer - source_layer], 0, idx, out=out)
        return out.copy_(self.decoder_rows(source_layer, features, target_layer))

    def decoder_rows_all(self, source_layer: int, features: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Decoder vectors `[n, T, d]` for every target in `target_layers(source_layer)`, one read."""
        self.target_layers(source_layer)
        rows = self._decoders[source_layer].rows(self._features(features), None)
        return rows.to(device=self.device, dtype=self.dtype)

    def decode(self, source_layer: int, acts: torch.Tensor, target_layer: int) -> torch.Tensor:
        """Contribution `acts · W_dec[source → target]` `[..., d]` (no bias, no skip).

        Only features active somewhere in `acts` are read, so this is cheap for sparse
        activations even with lazy decoders. `acts` may be dense `[..., F]` or sparse COO `[P, F]`.
        """
        if acts.shape[-1] != self.n_features:
            raise ShapeMismatchError(
                f"activations of layer {source_layer} have {acts.shape[-1]} features, "
                f"transcoders have {self.n_features}"
            )
        if acts.is_sparse:
            return self._decode_sparse(source_layer, acts, target_layer)
        flat = acts.reshape(-1, self.n_features).to(self.dtype)
        active = flat.ne(0).any(0).nonzero().squeeze(1)
        rows = self.decoder_rows(source_layer, active, target_layer)
        out = flat.index_select(1, active.to(flat.device)).to(self.device) @ rows
        return out.reshape(*acts.shape[:-1], self.d_model)

    def _decode_sparse(self, source_layer: int, acts: torch.Tensor, target_layer: int) -> torch.Tensor:
        if acts.dim() != 2:
            raise ShapeMismatchError(f"sparse activations must be [P, F], got {list(acts.shape)}")
        acts = acts.coalesce()
        pos, feat = acts.indices()
        unique, inverse = torch.unique(feat, return_inverse=True)
        rows = self.decoder_rows(source_layer, unique, target_layer)
        values = acts.values().to(device=self.device, dtype=self.dtype)
        out = torch.zeros(acts.shape[0], self.d_model, device=self.device, dtype=self.dtype)
        return out.index_add_(0, pos.to(self.device), values[:, None] * rows[inverse.to(self.device)])

    def skip(self, layer: int, x: torch.Tensor) -> torch.Tensor | None:
        """Skip term `x · W_skipᵀ` `[..., d]` at `layer`, or None when the set has no skips."""
        layer = self._layer(layer)
        if self._W_skip is None:
            return None
        self._check_width(x, "x")
        return x.to(self.dtype) @ self._W_skip[layer].T

    def reconstruct(self, layer: int, acts_by_source: Mapping[int, torch.Tensor],
                    x_in: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction of the output hook of `layer`: Σ decoder terms + `b_dec` + skip.

        `acts_by_source` must hold every layer in `source_layers(layer)` (extra layers are
        ignored, so one dict of all layers can be passed for every target). `x_in` (the input
        hook of `layer`) is needed only when the set has skips.
        """
        sources = self.source_layers(layer)
        missing = [s for s in sources if s not in acts_by_source]
        if missing:
            raise ShapeMismatchError(
                f"reconstruct(layer={layer}) needs activations of source layers "
                f"{list(sources)}; missing {missing}"
            )
        total = sum(self.decode(s, acts_by_source[s], layer) for s in sources)
        assert isinstance(total, torch.Tensor)
        total = total + self._b_dec[layer]
        if self._W_skip is not None:
            if x_in is None:
                raise ShapeMismatchError(f"reconstruct(layer={layer}) needs x_in: this set has skip connections")
            total = total + self.skip(layer, x_in)
        return total

    # ------------------------------------------------------------------ model pairing, movement

    def validate_against(self, n_layers: int, d_model: int, model_name: str | None = None) -> None:
        """Check that this set fits a model; raise ShapeMismatchError naming the mismatch."""
        if n_layers != self.n_layers or d_model != self.d_model:
            name = f" {model_name}" if model_name else ""
            raise ShapeMismatchError(
                f"transcoders{f' ({self.scan})' if self.scan else ''} have n_layers="
                f"{self.n_layers}, d_model={self.d_model}; the model{name} has "
                f"n_layers={n_layers}, d_model={d_model}"
            )

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> Transcoders:
        """Move/cast in place (like `nn.Module.to`) and return self; lazy rows follow on read."""
        device = torch.device(device) if device is not None else self.device
        dtype = dtype or self.dtype
        if not dtype.is_floating_point:
            raise TranscoderFormatError(f"transcoders need a floating dtype, got {dtype}")

        def move(ts: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
            return None if ts is None else [t.to(device=device, dtype=dtype) for t in ts]

        self._encoders = [enc.to(device, dtype) for enc in self._encoders]
        self._b_enc = move(self._b_enc)  # type: ignore[assignment]
        self._b_dec = move(self._b_dec)  # type: ignore[assignment]
        self._threshold = move(self._threshold)
        self._W_skip = move(self._W_skip)
        self._decoders = [dec.to(device, dtype) for dec in self._decoders]
        return self

    def mapped_files(self) -> list[str]:
        """Files that lazy encoders or decoders read from (writers refuse to overwrite them)."""
        stores = [*self._encoders, *self._decoders]
        return sorted({str(store.file.path) for store in stores if getattr(store, "file", None)})

    def check_output_dir(self, directory: str | os.PathLike[str]) -> None:
        """Refuse to write into the directory a lazy set reads from: it would clobber its source."""
        target = os.path.realpath(directory)
        for path in self.mapped_files():
            # Both the folder the file is named in and the one it resolves to: hub snapshots
            # hold symlinks into a blobs/ folder, and writing the snapshot would replace them.
            folders = {os.path.realpath(os.path.dirname(os.path.abspath(path))),
                       os.path.dirname(os.path.realpath(path))}
            if target in folders:
                raise TranscoderFormatError(
                    f"cannot save into {directory}: this set reads its weights lazily from {path}; "
                    "save to another directory"
                )

    def check_finite(self, budget_bytes: int = 256 << 20) -> None:
        """Scan every encoder and decoder for NaN/inf (lazy ones are otherwise checked per read)."""
        for layer, enc in enumerate(self._encoders):
            for chunk in enc.chunks(budget_bytes):  # lazy chunks also check themselves on read
                if not all_finite(chunk):
                    raise TranscoderFormatError(f"{enc.description} ({self._where(layer)}) holds NaN or inf")
        for layer, dec in enumerate(self._decoders):
            for chunk in dec.chunks(budget_bytes):
                if not all_finite(chunk):
                    raise TranscoderFormatError(f"{dec.description} ({self._where(layer)}) holds NaN or inf")

    # ------------------------------------------------------------------ writers

    def save_native(self, directory: str | os.PathLike[str]) -> None:
        """Write circuit-atlas's own format (JSON config + safetensors); see `native.py`."""
        save_native(self, directory)

    def save_circuit_tracer(self, directory: str | os.PathLike[str]) -> None:
        """Write a folder circuit-tracer loads as a local set (`docs/formats.md` §5.6)."""
        save_circuit_tracer(self, directory)

    def __repr__(self) -> str:
        extra = f", k={self.k}" if self.k is not None else ""
        return (
            f"Transcoders(kind={self.kind!r}, n_layers={self.n_layers}, d_model={self.d_model}, "
            f"n_features={self.n_features}, activation={self.activation_name!r}{extra}, "
            f"skip={self.has_skip}, hooks={self.input_hook!r}->{self.output_hook!r}, "
            f"dtype={self.dtype}, lazy_decoder={self.lazy_decoder}, lazy_encoder={self.lazy_encoder}, "
            f"scan={self.scan!r})"
        )
