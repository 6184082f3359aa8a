"""Turn a trained stack into a `circuit_atlas.transcoders.Transcoders` and write it to disk.

Training-only structure disappears here: normalisation scales are folded into the weights
(`TranscoderStack.export_weights`), a skip transcoder becomes a PLT set with `W_skip`, and
TopK / BatchTopK become JumpReLU with the threshold estimated during training (so the exported
set is a plain, format-portable JumpReLU set that circuit-tracer can load too).
"""

from __future__ import annotations

from pathlib import Path

from circuit_atlas.training.architecture import TranscoderStack
from circuit_atlas.transcoders import Transcoders

NATIVE_DIR = "transcoders"
CIRCUIT_TRACER_DIR = "circuit_tracer"


def to_transcoders(stack: TranscoderStack, *, input_hook: str, output_hook: str,
                   model_name: str | None = None, scan: str | None = None):
    """A `Transcoders` object computing exactly the stack's inference activations on raw
    (unnormalised) model activations."""
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
        input_hook=input_hook,
        output_hook=output_hook,
        model_name=model_name,
        scan=scan,
    )


def export_transcoders(stack: TranscoderStack, out_dir: str | Path, *, input_hook: str,
                       output_hook: str, model_name: str | None = None,
                       scan: str | None = None, circuit_tracer: bool = True) -> dict[str, Path]:
    """Write `<out_dir>/transcoders` (native) and, unless disabled or impossible (a CLT with a
    skip, which circuit-tracer's CLT files cannot hold), `<out_dir>/circuit_tracer`."""
    out_dir = Path(out_dir)
    tc = to_transcoders(stack, input_hook=input_hook, output_hook=output_hook,
                        model_name=model_name, scan=scan)
    written = {"native": out_dir / NATIVE_DIR}
    tc.save_native(written["native"])
    if circuit_tracer and not (tc.kind == "clt" and tc.has_skip):
        written["circuit_tracer"] = out_dir / CIRCUIT_TRACER_DIR
        tc.save_circuit_tracer(written["circuit_tracer"])
    return written
