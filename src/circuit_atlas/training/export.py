"""Turn a trained stack into a `circuit_atlas.transcoders.Transcoders` and write it to disk.

Training-only structure disappears here: normalisation scales are folded into the weights
(`TranscoderStack.export_weights`), a skip transcoder becomes a PLT set with `W_skip`, TopK
stays TopK (k goes into the config), and BatchTopK becomes JumpReLU with the per-feature
thresholds fitted after training (`thresholds.py`), so the exported set computes what was
trained (`fidelity.py` measures it).

A run over some layers of a model (`--layers`) writes a *partial* native set (those layers
only), unless it started from an existing set (`--init-from`): then the other layers are copied
from it and the export is a complete set again.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from circuit_atlas.training.architecture import TranscoderStack
from circuit_atlas.transcoders import Transcoders
from circuit_atlas.transcoders.native import save_native

NATIVE_DIR = "transcoders"
CIRCUIT_TRACER_DIR = "circuit_tracer"


def to_transcoders(stack: TranscoderStack, *, input_hook: str, output_hook: str,
                   model_name: str | None = None, scan: str | None = None):
    """A `Transcoders` object computing exactly the stack's inference activations on raw
    (unnormalised) model activations; its layer i is the stack's layer i."""
    w = stack.export_weights()
    L = stack.n_layers
    return Transcoders(
        "clt" if w.kind == "clt" else "plt",
        W_enc=[w.W_enc[layer] for layer in range(L)],
        b_enc=[w.b_enc[layer] for layer in range(L)],
        b_dec=[w.b_dec[layer] for layer in range(L)],
        W_dec=list(w.W_dec),
        threshold=None if w.threshold is None else [w.threshold[layer] for layer in range(L)],
        W_skip=None if w.W_skip is None else [w.W_skip[layer] for layer in range(L)],
        activation=w.activation,
        k=w.k,
        input_hook=input_hook,
        output_hook=output_hook,
        model_name=model_name,
        scan=scan,
    )


def merge_layers(base_layers: dict, trained, layers: Sequence[int], n_total: int):
    """A complete per-layer set: layer `layers[i]` from `trained`'s layer i, every other layer
    from `base_layers[layer]` (raw tensors `W_enc`, `b_enc`, `b_dec`, `W_dec` `[F, d]`,
    `threshold`, `W_skip`, as `init.BaseLayer` holds them). `init.check_compatible` has checked
    before training that both agree on features, activation, skip and hooks."""
    by_number = {number: i for i, number in enumerate(layers)}
    everything = torch.arange(trained.n_features)

    def tensors(number: int) -> dict:
        if number in by_number:
            i = by_number[number]
            return {"W_enc": trained.encoder_weight(i), "b_enc": trained.encoder_bias(i),
                    "b_dec": trained.decoder_bias(i),
                    "W_dec": trained.decoder_rows_all(i, everything)[:, 0],
                    "threshold": trained.threshold(i), "W_skip": trained.skip_weight(i)}
        part = base_layers[number]
        return {name: getattr(part, name) for name in
                ("W_enc", "b_enc", "b_dec", "W_dec", "threshold", "W_skip")}

    rows = [{k: None if v is None else v.detach().float().cpu() for k, v in tensors(n).items()}
            for n in range(n_total)]
    return Transcoders(
        "plt", W_enc=[r["W_enc"] for r in rows], b_enc=[r["b_enc"] for r in rows],
        b_dec=[r["b_dec"] for r in rows], W_dec=[r["W_dec"] for r in rows],
        threshold=None if trained.threshold(0) is None else [r["threshold"] for r in rows],
        W_skip=None if not trained.has_skip else [r["W_skip"] for r in rows],
        activation=trained.activation_name, k=trained.k, input_hook=trained.input_hook,
        output_hook=trained.output_hook, model_name=trained.model_name, scan=trained.scan)


def export_transcoders(stack: TranscoderStack, out_dir: str | Path, *, input_hook: str,
                       output_hook: str, model_name: str | None = None,
                       scan: str | None = None, circuit_tracer: bool = True,
                       layers: Sequence[int] | None = None, n_model_layers: int | None = None,
                       base=None) -> dict[str, Path]:
    """Write `<out_dir>/transcoders` (native) and, when the format can hold the set,
    `<out_dir>/circuit_tracer`.

    `layers` (model layer of each stack layer) and `n_model_layers` describe a run over some
    layers only; `base` (model layer → raw tensors of a starting set, see `merge_layers`) fills
    the others. circuit-tracer's files cannot hold a
    partial set, a CLT with skips or a TopK CLT; those are written in the native format only
    (`circuit_tracer_obstacle` says why). Returns the written folders by format name.
    """
    out_dir = Path(out_dir)
    n_total = n_model_layers if n_model_layers is not None else stack.n_layers
    numbers = list(layers) if layers is not None else list(range(stack.n_layers))
    tc = to_transcoders(stack, input_hook=input_hook, output_hook=output_hook,
                        model_name=model_name, scan=scan)
    partial = numbers != list(range(n_total))
    if partial and base is not None:
        tc, partial = merge_layers(base, tc, numbers, n_total), False
    written: dict[str, Path] = {"native": out_dir / NATIVE_DIR}
    if partial:
        save_native(tc, written["native"], layer_numbers=numbers, n_model_layers=n_total)
    else:
        tc.save_native(written["native"])
    reason = circuit_tracer_obstacle(tc, partial)
    if circuit_tracer and reason is None:
        written["circuit_tracer"] = out_dir / CIRCUIT_TRACER_DIR
        tc.save_circuit_tracer(written["circuit_tracer"])
    return written


def circuit_tracer_obstacle(tc, partial: bool) -> str | None:
    """Why circuit-tracer's format cannot hold this set, or None when it can."""
    if partial:
        return "it holds only some layers of the model"
    if tc.kind == "clt" and tc.has_skip:
        return "its cross-layer files have no place for skip connections"
    if tc.kind == "clt" and tc.activation_name == "topk":
        return "its cross-layer transcoders support only ReLU and JumpReLU"
    return None
