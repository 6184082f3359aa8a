"""Adding a transcoder format is one module plus one `FORMATS` entry: a toy format (a JSON config
and one numpy archive per layer) is refused until registered, then loads from a local folder and
from the (fake) hub through the same two loaders as every built-in format, and matches the
weights it was written from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from circuit_atlas.errors import TranscoderFormatError
from circuit_atlas.transcoders import (
    FORMATS,
    ReadOptions,
    TranscoderFormat,
    load_transcoders,
    random_transcoders,
    register_format,
)
from circuit_atlas.transcoders.formats import format_of
from circuit_atlas.transcoders.parts import LayerParts, SetParts
from circuit_atlas.transcoders.refs import TranscoderRef, fetch_weights

CONFIG = "toy_transcoders.json"


# ---------------------------------------------------------------- the new format's module
def write_toy(tc, folder: Path) -> None:
    """PLT only: `layer_<l>.npz` with encoder rows, decoder rows and biases, then the config."""
    folder.mkdir(parents=True, exist_ok=True)
    for layer in range(tc.n_layers):
        np.savez(folder / f"layer_{layer}.npz",
                 W_enc=tc.encoder_weight(layer).numpy(),
                 W_dec=tc.decoder_rows_all(layer, torch.arange(tc.n_features))[:, 0].numpy(),
                 b_enc=tc.encoder_bias(layer).numpy(), b_dec=tc.decoder_bias(layer).numpy())
    (folder / CONFIG).write_text(json.dumps({"n_layers": tc.n_layers, "input_hook": tc.input_hook,
                                             "output_hook": tc.output_hook}))


def read_toy(folder: Path, options: ReadOptions) -> SetParts:
    config = json.loads((folder / CONFIG).read_text())
    layers = []
    for layer in range(config["n_layers"]):
        with np.load(folder / f"layer_{layer}.npz") as arrays:
            tensors = {k: torch.from_numpy(arrays[k]).to(options.dtype) for k in arrays.files}
        layers.append(LayerParts(origin=str(folder / f"layer_{layer}.npz"), **tensors))
    return SetParts("plt", layers, input_hook=config["input_hook"],
                    output_hook=config["output_hook"], where=str(folder / CONFIG), activation="relu",
                    scan=str(folder.resolve()))


def fetch_toy(ref: TranscoderRef, config_path: Path):
    return fetch_weights(ref, [CONFIG, "layer_*.npz"]), None


TOY = TranscoderFormat("toy", CONFIG, read=read_toy, fetch=fetch_toy, write=write_toy)


# ---------------------------------------------------------------- the test
@pytest.fixture()
def toy_format():
    before = list(FORMATS)
    yield TOY
    FORMATS[:] = before


@pytest.fixture()
def written(tmp_path):
    tc = random_transcoders("plt", 3, 6, 10, seed=4, input_hook="hook_resid_mid",
                            output_hook="hook_mlp_out")
    write_toy(tc, tmp_path / "toy")
    return tc, tmp_path / "toy"


def _same(a, b) -> None:
    x = torch.randn(5, a.d_model, generator=torch.Generator().manual_seed(0), dtype=a.dtype)
    acts = {layer: a.encode(layer, x) for layer in range(a.n_layers)}
    for layer in range(a.n_layers):
        assert torch.equal(acts[layer], b.encode(layer, x))
        assert torch.allclose(a.reconstruct(layer, acts, x), b.reconstruct(layer, acts, x))
    assert (a.input_hook, a.output_hook) == (b.input_hook, b.output_hook)


def test_unregistered_format_is_refused_naming_the_known_ones(toy_format, written):
    _, folder = written
    with pytest.raises(TranscoderFormatError, match="circuit_atlas_transcoders.json .* or config.yaml"):
        load_transcoders(str(folder))


def test_one_entry_makes_the_local_loader_read_it(toy_format, written):
    tc, folder = written
    register_format(toy_format)
    assert format_of(folder) is TOY
    back = load_transcoders(str(folder), dtype="float64")
    assert back.kind == "plt" and back.dtype == torch.float64 and back.scan == str(folder)
    _same(tc.to(dtype=torch.float64), back)


def test_one_entry_makes_the_hub_loader_read_it(toy_format, written, hub):
    tc, folder = written
    register_format(toy_format)
    write_toy(tc, hub.repo("me/sets") / "toy")
    back = load_transcoders("me/sets/toy@v1")
    assert back.scan == "me/sets//toy@v1"
    _same(tc, back)
    # every known config name was tried in table order, then the format's own files fetched
    probed = [name for _, name, _ in hub.files]
    assert probed == [f"toy/{f.config_file}" for f in FORMATS]
    assert hub.patterns == [("me/sets", (f"toy/{CONFIG}", "toy/layer_*.npz"), "v1")]


def test_built_in_formats_write_what_they_read(tmp_path):
    tc = random_transcoders("clt", 2, 4, 8, activation="jumprelu", seed=2)
    for fmt in FORMATS:
        fmt.write(tc, tmp_path / fmt.name)
        assert format_of(tmp_path / fmt.name) is fmt
        _same(tc, load_transcoders(str(tmp_path / fmt.name)))
