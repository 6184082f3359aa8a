"""Transcoders: per-layer (PLT) and cross-layer (CLT) sets behind one interface.

`load_transcoders(ref)` reads circuit-tracer directories (PLT `layer_i` files, CLT
`W_enc_i`/`W_dec_i` files), GemmaScope `params.npz` and GemmaScope-2 safetensors sets, and our
native format, from a local directory or the Hugging Face hub. `Transcoders.save_native` and
`Transcoders.save_circuit_tracer` write them back. The formats are described in
`docs/formats.md` and listed in one table, `formats.FORMATS`.
"""

from circuit_atlas.transcoders.core import Transcoders
from circuit_atlas.transcoders.formats import FORMATS, TranscoderFormat, register_format
from circuit_atlas.transcoders.loading import load_directory, load_transcoders
from circuit_atlas.transcoders.parts import ReadOptions
from circuit_atlas.transcoders.random import random_transcoders
from circuit_atlas.transcoders.refs import TranscoderRef, parse_reference

__all__ = [
    "FORMATS",
    "ReadOptions",
    "TranscoderFormat",
    "Transcoders",
    "TranscoderRef",
    "load_directory",
    "load_transcoders",
    "parse_reference",
    "random_transcoders",
    "register_format",
]
