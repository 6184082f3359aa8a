"""circuit-tracer directories (docs/formats.md §5): hand-written files read, our files written compatibly."""

from __future__ import annotations

import warnings

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from circuit_atlas.errors import TranscoderFormatError
from circuit_atlas.transcoders import load_transcoders, random_transcoders


def test_plt_files_match_reference_formula(make_ct_plt):
    root, raw = make_ct_plt(threshold=True, skip=True)
    tc = load_transcoders(str(root))
    assert (tc.kind, tc.n_layers, tc.d_model, tc.n_features) == ("plt", 3, 6, 10)
    assert (tc.input_hook, tc.output_hook, tc.activation_name) == ("hook_resid_mid", "mlp.hook_out", "jumprelu")
    assert tc.model_name == "toy/model" and tc.scan == str(root)  # local dir: scan = the path as given (docs/formats.md §2)
    x = torch.randn(4, 6)
    for layer, t in enumerate(raw.layers):
        h = x @ t["W_enc"].T + t["b_enc"]
        a = h * (h > t["activation_function.threshold"])
        assert torch.allclose(tc.encode(layer, x), a, atol=1e-5)
        y = a @ t["W_dec"] + t["b_dec"] + x @ t["W_skip"].T  # docs/formats.md §5.3
        assert torch.allclose(tc.reconstruct(layer, {layer: a}, x), y, atol=1e-5)


def test_clt_files_match_reference_formula(make_ct_clt):
    root, raw = make_ct_clt(threshold=True)
    tc = load_transcoders(str(root), lazy_decoder=False)
    assert (tc.kind, tc.activation_name, tc.has_skip) == ("clt", "jumprelu", False)
    xs = [torch.randn(3, raw.d) for _ in range(raw.L)]
    acts = {}
    for i in range(raw.L):
        h = xs[i] @ raw.enc[i][f"W_enc_{i}"].T + raw.enc[i][f"b_enc_{i}"]
        acts[i] = h * (h > raw.enc[i][f"threshold_{i}"])
        assert torch.allclose(tc.encode(i, xs[i]), acts[i], atol=1e-5)
    for layer in range(raw.L):
        y = raw.enc[layer][f"b_dec_{layer}"] + sum(acts[i] @ raw.dec[i][:, layer - i] for i in range(layer + 1))
        assert torch.allclose(tc.reconstruct(layer, acts, xs[layer]), y, atol=1e-5)


def test_topk_from_config_and_from_k_tensor(make_ct_plt, tmp_path):
    root, raw = make_ct_plt(config_extra={"activation": "topk", "k": 3})
    tc = load_transcoders(str(root))
    x = torch.randn(5, 6)
    h = x @ raw.layers[1]["W_enc"].T + raw.layers[1]["b_enc"]
    kth = h.topk(3, dim=-1).values[:, -1:]
    assert tc.activation_name == "topk" and tc.k == 3
    assert torch.allclose(tc.encode(1, x), torch.where(h >= kth, h, torch.zeros(())), atol=1e-6)
    # circuit-tracer's own TopK writer stores a scalar k tensor; we accept it as k
    for i, t in enumerate(raw.layers):
        save_file({**t, "k": torch.tensor(3)}, str(root / f"layer_{i}.safetensors"))
    (root / "config.yaml").write_text(yaml.safe_dump({"model_kind": "transcoder_set",
                                                      "feature_input_hook": "a", "feature_output_hook": "b"}))
    assert load_transcoders(str(root)).k == 3


def test_unknown_config_keys_are_warned_about(make_ct_plt):
    """A misspelt key (`activaton: topk`) used to be accepted silently and change nothing."""
    from circuit_atlas.errors import TranscoderFormatWarning

    root, _ = make_ct_plt(config_extra={"activaton": "topk", "dtype": "bf16", "revision": "main",
                                        "repo_id": "org/set", "subfolder": None})
    with pytest.warns(TranscoderFormatWarning, match=r"config.yaml: ignoring unknown key\(s\) "
                                                     r"'activaton', 'dtype'; the keys read are"):
        tc = load_transcoders(str(root))
    assert tc.activation_name == "relu"
    config = yaml.safe_load((root / "config.yaml").read_text())
    for key in ("activaton", "dtype"):
        del config[key]
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_transcoders(str(root))  # the keys of docs/formats.md §5.1 only: silent


def test_config_activation_conflicts_are_errors(make_ct_plt):
    root, _ = make_ct_plt(threshold=True, config_extra={"activation": "relu"})
    with pytest.raises(TranscoderFormatError, match="threshold.*layer_0.safetensors"):
        load_transcoders(str(root))


def test_transcoders_list_with_local_relative_paths(make_ct_plt):
    root, raw = make_ct_plt()
    (root / "weights").mkdir()
    for i in range(raw.L):
        (root / f"layer_{i}.safetensors").rename(root / "weights" / f"L{i}.safetensors")
    config = yaml.safe_load((root / "config.yaml").read_text())
    config["transcoders"] = [f"weights/L{i}.safetensors" for i in range(raw.L)]
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    tc = load_transcoders(str(root))
    assert torch.equal(tc.decoder_rows(2, [4], 2)[0], raw.layers[2]["W_dec"][4])


@pytest.mark.parametrize("kind,activation", [("plt", "relu"), ("plt", "jumprelu"), ("plt", "topk"),
                                             ("clt", "relu"), ("clt", "jumprelu")])
def test_save_circuit_tracer_round_trip_and_key_layout(tmp_path, kind, activation):
    tc = random_transcoders(kind, 3, 8, 24, activation=activation, skip=kind == "plt", seed=7, model_name="m/x")
    tc.save_circuit_tracer(tmp_path)
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config["model_kind"] == {"plt": "transcoder_set", "clt": "cross_layer_transcoder"}[kind]
    assert config["model_name"] == "m/x"
    if kind == "plt":
        with safe_open(str(tmp_path / "layer_0.safetensors"), "pt") as f:
            expected = {"W_enc", "W_dec", "b_enc", "b_dec", "W_skip"}
            if activation == "jumprelu":
                expected.add("activation_function.threshold")
            assert set(f.keys()) == expected  # no 'k' key: circuit-tracer's reader rejects it (§5.3)
            assert f.get_tensor("W_dec").shape == (24, 8)
        if activation == "topk":
            assert config["activation"] == "topk" and config["k"] == 3
    else:
        with safe_open(str(tmp_path / "W_dec_1.safetensors"), "pt") as f:
            assert set(f.keys()) == {"W_dec_1"} and f.get_tensor("W_dec_1").shape == (24, 2, 8)
    back = load_transcoders(str(tmp_path))
    x = torch.randn(4, 8)
    acts = {i: tc.encode(i, x) for i in range(3)}
    for layer in range(3):
        assert torch.equal(back.encode(layer, x), acts[layer])
        assert torch.allclose(back.reconstruct(layer, acts, x), tc.reconstruct(layer, acts, x), atol=1e-6)


def test_save_circuit_tracer_refuses_clt_skip_and_topk(tmp_path):
    with pytest.raises(TranscoderFormatError, match="skip"):
        random_transcoders("clt", 2, 4, 8, skip=True).save_circuit_tracer(tmp_path)
    with pytest.raises(TranscoderFormatError, match="TopK"):
        random_transcoders("clt", 2, 4, 8, activation="topk").save_circuit_tracer(tmp_path)


def test_clt_w_skip_file_is_ignored_like_circuit_tracer(make_ct_clt):
    root, raw = make_ct_clt()
    save_file({"W_skip": torch.randn(raw.L, raw.d, raw.d)}, str(root / "W_skip.safetensors"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tc = load_transcoders(str(root))
    assert not tc.has_skip and any("W_skip" in str(w.message) for w in caught)


def test_saving_over_own_lazy_source_is_refused(make_ct_plt):
    root, _ = make_ct_plt()
    tc = load_transcoders(str(root))
    with pytest.raises(TranscoderFormatError, match="lazily"):
        tc.save_circuit_tracer(root)
