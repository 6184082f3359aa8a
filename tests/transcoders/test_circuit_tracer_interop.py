"""Interop with the real circuit-tracer package, when it is importable (it is not a dependency).

Run with circuit-tracer on the path (e.g. `pip download --no-deps circuit-tracer`, unzip the
wheel, `PYTHONPATH=<unzipped> pytest tests/transcoders`): files we write load in circuit-tracer
with identical activations and reconstructions, and files it writes load in ours.
"""

from __future__ import annotations

import pytest
import torch

from circuit_atlas.transcoders import load_transcoders, random_transcoders

try:
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt, load_gemma_scope_2_clt
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set
except ImportError as exc:  # not installed, or a version whose imports clash with ours
    pytest.skip(f"circuit-tracer not importable: {exc}", allow_module_level=True)

def load_theirs(directory, lazy_decoder=True):
    """What circuit-tracer's local/cache loader does for a directory (docs/formats.md §5.5)."""
    cpu = torch.device("cpu")
    hooks = dict(feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out")
    if (directory / "layer_0.safetensors").exists():
        paths = {int(p.stem.split("_")[1]): str(p) for p in directory.glob("layer_*.safetensors")}
        return load_transcoder_set(paths, scan="x", device=cpu, lazy_decoder=lazy_decoder, **hooks)
    return load_clt(str(directory), scan="x", device=cpu, dtype=torch.float32, lazy_decoder=lazy_decoder, **hooks)


CASES = [("plt", "relu", True), ("plt", "jumprelu", True), ("plt", "jumprelu", False),
         ("clt", "relu", False), ("clt", "jumprelu", False)]


def _ours_vs_theirs(ours, theirs, x):
    comps = theirs.compute_attribution_components(x, zero_positions=slice(0, 0))
    acts = {layer: ours.encode(layer, x[layer]) for layer in range(ours.n_layers)}
    dense = comps["activation_matrix"].to_dense()
    for layer in range(ours.n_layers):
        assert torch.allclose(dense[layer], acts[layer], atol=1e-5)
        ours_recon = ours.reconstruct(layer, acts, x[layer])
        assert torch.allclose(comps["reconstruction"][layer], ours_recon, atol=1e-4)


@pytest.mark.parametrize("kind,activation,skip", CASES)
def test_our_files_load_in_circuit_tracer(tmp_path, kind, activation, skip):
    tc = random_transcoders(kind, 3, 8, 32, activation=activation, skip=skip, seed=5)
    tc.save_circuit_tracer(tmp_path)
    theirs = load_theirs(tmp_path)
    _ours_vs_theirs(tc, theirs, torch.randn(3, 6, 8))


@pytest.mark.parametrize("kind,activation,skip", CASES)
def test_their_files_load_in_ours(tmp_path, kind, activation, skip):
    source = random_transcoders(kind, 3, 8, 32, activation=activation, skip=skip, seed=6)
    source.save_circuit_tracer(tmp_path / "a")
    theirs = load_theirs(tmp_path / "a", lazy_decoder=False)
    theirs.to_safetensors(str(tmp_path / "b"))  # circuit-tracer's own writer
    (tmp_path / "b" / "config.yaml").write_text((tmp_path / "a" / "config.yaml").read_text())
    _ours_vs_theirs(load_transcoders(str(tmp_path / "b")), theirs, torch.randn(3, 6, 8))


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_gemmascope2_matches_circuit_tracer(make_gemmascope2, kind):
    root, raw = make_gemmascope2(kind, L=3, skip=True)
    paths = {i: str(root / f"params_layer_{i}.safetensors") for i in range(3)}
    cpu = torch.device("cpu")
    if kind == "plt":
        theirs = load_transcoder_set(paths, scan="x", feature_input_hook="a", feature_output_hook="b", device=cpu,
                                     special_load_fn="gemma-scope-2", lazy_encoder=False, lazy_decoder=False)
    else:
        paths[3] = paths[2]  # circuit-tracer reads range(max key) files (docs/formats.md §6.3), so list one extra
        theirs = load_gemma_scope_2_clt(paths, device=cpu, dtype=torch.float32)
    _ours_vs_theirs(load_transcoders(str(root)), theirs, torch.randn(3, 4, raw.d))


def test_gemmascope_npz_matches_circuit_tracer(make_gemmascope_npz):
    root, raw = make_gemmascope_npz(L=2)
    entries = [str(root / f"layer_{i}/width_16k/average_l0_7/params.npz") for i in range(2)]
    theirs = load_transcoder_set(dict(enumerate(entries)), scan="x", feature_input_hook="a", feature_output_hook="b",
                                 device=torch.device("cpu"), special_load_fn="gemma-scope")
    _ours_vs_theirs(load_transcoders(str(root)), theirs, torch.randn(2, 4, raw.d))
