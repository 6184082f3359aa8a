"""Native format: exact round trips for every kind/activation/skip, strict config checks."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from circuit_atlas.errors import ShapeMismatchError, TranscoderFormatError
from circuit_atlas.transcoders import load_transcoders, random_transcoders


@pytest.mark.parametrize("kind", ["plt", "clt"])
@pytest.mark.parametrize("activation", ["relu", "jumprelu", "topk"])
@pytest.mark.parametrize("skip", [False, True])
def test_round_trip_is_exact(tmp_path, kind, activation, skip):
    tc = random_transcoders(kind, 3, 8, 20, activation=activation, skip=skip, seed=11,
                            input_hook="hook_resid_mid", output_hook="hook_mlp_out", model_name="toy/m")
    tc.save_native(tmp_path)
    for lazy in (True, False):
        back = load_transcoders(str(tmp_path), lazy_decoder=lazy)
        assert (back.kind, back.activation_name, back.k, back.has_skip) == (kind, activation, tc.k, skip)
        assert (back.input_hook, back.output_hook, back.model_name, back.scan) == (
            "hook_resid_mid", "hook_mlp_out", "toy/m", tc.scan)
        x = torch.randn(5, 8)
        acts = {i: tc.encode(i, x) for i in range(3)}
        for layer in range(3):
            assert torch.equal(back.encode(layer, x), acts[layer])
            assert torch.equal(back.reconstruct(layer, acts, x), tc.reconstruct(layer, acts, x))


def test_files_hold_documented_layout(tmp_path):
    tc = random_transcoders("clt", 3, 4, 6, activation="jumprelu", skip=True)
    tc.save_native(tmp_path)
    config = json.loads((tmp_path / "circuit_atlas_transcoders.json").read_text())
    assert config["format"] == "circuit-atlas-transcoders" and config["version"] == 1
    assert (config["n_layers"], config["d_model"], config["n_features"], config["dtype"]) == (3, 4, 6, "float32")
    with safe_open(str(tmp_path / "encoder_1.safetensors"), "pt") as f:
        assert set(f.keys()) == {"W_enc", "b_enc", "b_dec", "threshold", "W_skip"}
        assert torch.equal(f.get_tensor("W_skip"), tc.skip_weight(1))
    with safe_open(str(tmp_path / "decoder_1.safetensors"), "pt") as f:
        assert f.get_tensor("W_dec").shape == (6, 2, 4)


def test_bfloat16_round_trip(tmp_path):
    tc = random_transcoders("clt", 2, 8, 16, dtype=torch.bfloat16)
    tc.save_native(tmp_path)
    back = load_transcoders(str(tmp_path), dtype="bfloat16")
    assert back.dtype == torch.bfloat16
    idx = torch.tensor([3, 1, 15])
    assert torch.equal(back.decoder_rows(0, idx, 1), tc.decoder_rows(0, idx, 1))
    assert torch.equal(back.encoder_weight(1), tc.encoder_weight(1))


def test_resave_after_lazy_load_streams_decoders(tmp_path):
    random_transcoders("clt", 3, 8, 20, seed=2).save_native(tmp_path / "a")
    lazy = load_transcoders(str(tmp_path / "a"))
    lazy.save_native(tmp_path / "b")
    lazy.save_circuit_tracer(tmp_path / "c")
    eager = load_transcoders(str(tmp_path / "a"), lazy_decoder=False)
    for other in ("b", "c"):
        again = load_transcoders(str(tmp_path / other), lazy_decoder=False)
        for i in range(3):
            assert torch.equal(again.decoder_store(i).weight, eager.decoder_store(i).weight)


def _edit_config(path, **changes):
    config = json.loads((path / "circuit_atlas_transcoders.json").read_text())
    config.update(changes)
    (path / "circuit_atlas_transcoders.json").write_text(json.dumps(config))


def test_config_errors_name_the_key(tmp_path):
    random_transcoders("plt", 2, 4, 6).save_native(tmp_path)
    _edit_config(tmp_path, version=2)
    with pytest.raises(TranscoderFormatError, match="version 2 is newer"):
        load_transcoders(str(tmp_path))
    _edit_config(tmp_path, version=1, kind="sae")
    with pytest.raises(TranscoderFormatError, match="'kind'"):
        load_transcoders(str(tmp_path))
    _edit_config(tmp_path, kind="plt", n_features=7)
    with pytest.raises(ShapeMismatchError, match="encoder_0.safetensors: tensor 'W_enc'"):
        load_transcoders(str(tmp_path))
    _edit_config(tmp_path, n_features=6, n_layers=1)
    with pytest.raises(TranscoderFormatError, match="encoder_1.safetensors: unexpected file"):
        load_transcoders(str(tmp_path))
    _edit_config(tmp_path, n_layers=2, dtype="float16")
    with pytest.raises(TranscoderFormatError, match="stored as float32"):
        load_transcoders(str(tmp_path))


def test_local_scan_is_not_carried_to_a_copy(tmp_path):
    random_transcoders("plt", 2, 4, 6).save_native(tmp_path / "a")
    first = load_transcoders(str(tmp_path / "a"))
    first.scan = str((tmp_path / "a").resolve())  # a set loaded from the absolute path, as typed
    first.save_native(tmp_path / "b")
    assert load_transcoders(str(tmp_path / "b")).scan == str(tmp_path / "b")  # its own, as typed
