"""circuit-tracer interop that always runs: sets written by circuit-tracer's own writers, with the
pre-activations, activations and reconstructions *its* code computed on a fixed input, load in
ours and give the same numbers.

The fixtures in `fixtures/circuit_tracer/<case>/` come from `fixtures/make_circuit_tracer_fixtures.py`
(run by hand with circuit-tracer on PYTHONPATH; see its docstring). Nothing here imports
circuit-tracer; `test_circuit_tracer_interop.py` covers the live round trip where it is installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from circuit_atlas.transcoders import load_transcoders

FIXTURES = Path(__file__).parent / "fixtures" / "circuit_tracer"
CASES = ("plt_relu", "plt_jumprelu_skip", "clt_jumprelu")
ATOL = 1e-5


def load_case(name: str) -> tuple[Path, dict, dict[str, torch.Tensor]]:
    directory = FIXTURES / name
    meta = json.loads((directory / "expected.json").read_text(encoding="utf-8"))
    return directory, meta, load_file(str(directory / "expected.safetensors"))


def test_fixture_set_is_complete_small_and_pickle_free():
    """A deleted or renamed case must fail here rather than silently shrink the coverage."""
    assert sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()) == sorted(CASES)
    files = [p for p in FIXTURES.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} == {".safetensors", ".yaml", ".json"}
    assert sum(p.stat().st_size for p in files) < 200_000


@pytest.mark.parametrize("name", CASES)
def test_fixture_exercises_what_it_claims(name):
    """The recorded outputs are not degenerate, independently of circuit-tracer's own check."""
    directory, meta, expected = load_case(name)
    acts, pre = expected["activations"], expected["pre_activations"]
    L, P, d, F = meta["n_layers"], meta["n_positions"], meta["d_model"], meta["n_features"]
    assert expected["input"].shape == (L, P, d) and expected["reconstruction"].shape == (L, P, d)
    assert acts.shape == pre.shape == (L, P, F)
    assert 0 < int((acts != 0).sum()) < acts.numel()          # some on, some off
    assert torch.equal(acts != 0, (acts == pre) & (pre != 0))  # active values are the pre-activations
    if meta["activation"] == "relu":
        assert torch.equal(acts, torch.relu(pre))
    else:  # JumpReLU differs from ReLU both ways: gated positives, negatives above a negative θ
        assert bool(((pre > 0) & (acts == 0)).any()) and bool((acts < 0).any())
    config = yaml.safe_load((directory / "config.yaml").read_text(encoding="utf-8"))
    assert config["feature_input_hook"] == meta["input_hook"]


@pytest.mark.parametrize("lazy_decoder", [True, False])
@pytest.mark.parametrize("name", CASES)
def test_ours_match_circuit_tracer_outputs(name, lazy_decoder):
    directory, meta, expected = load_case(name)
    tc = load_transcoders(directory, lazy_decoder=lazy_decoder)
    assert (tc.kind, tc.n_layers, tc.d_model, tc.n_features) == (
        meta["kind"], meta["n_layers"], meta["d_model"], meta["n_features"])
    assert (tc.input_hook, tc.output_hook) == (meta["input_hook"], meta["output_hook"])
    assert (tc.activation_name, tc.has_skip) == (meta["activation"], meta["has_skip"])
    assert tc.scan == meta["scan"]  # the scan circuit-tracer's loader reported for this directory
    x = expected["input"]
    acts = {}
    for layer in range(tc.n_layers):
        pre = tc.pre_activation(layer, x[layer])
        torch.testing.assert_close(pre, expected["pre_activations"][layer], atol=ATOL, rtol=0)
        acts[layer] = tc.encode(layer, x[layer])
        torch.testing.assert_close(acts[layer], expected["activations"][layer], atol=ATOL, rtol=0)
    for layer in range(tc.n_layers):
        recon = tc.reconstruct(layer, acts, x[layer])
        torch.testing.assert_close(recon, expected["reconstruction"][layer], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", CASES)
def test_reconstruction_from_recorded_activations(name):
    """Decoding circuit-tracer's own activations (not ours) gives its reconstruction, so a
    decoder-side error cannot hide behind a matching encoder-side one."""
    directory, _meta, expected = load_case(name)
    tc = load_transcoders(directory)
    theirs = {layer: expected["activations"][layer] for layer in range(tc.n_layers)}
    for layer in range(tc.n_layers):
        recon = tc.reconstruct(layer, theirs, expected["input"][layer])
        torch.testing.assert_close(recon, expected["reconstruction"][layer], atol=ATOL, rtol=0)
