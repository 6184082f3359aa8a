"""Bad files give the right error class and name the file and tensor."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import save_file

from circuit_atlas.errors import ShapeMismatchError, TranscoderFormatError
from circuit_atlas.transcoders import load_transcoders


def _rewrite(root, raw, layer, **changes):
    tensors = {k: v for k, v in raw.layers[layer].items()}
    for key, value in changes.items():
        if value is None:
            tensors.pop(key)
        else:
            tensors[key] = value
    save_file(tensors, str(root / f"layer_{layer}.safetensors"))


def test_wrong_shape_tensor(make_ct_plt):
    root, raw = make_ct_plt()
    _rewrite(root, raw, 1, W_dec=torch.zeros(10, 7))
    with pytest.raises(ShapeMismatchError, match=r"layer_1.safetensors: tensor 'W_dec' has shape \[10, 7\], expected \[10, 6\]"):
        load_transcoders(str(root), lazy_decoder=False)
    with pytest.raises(ShapeMismatchError, match="layer_1.safetensors: tensor 'W_dec'"):
        load_transcoders(str(root))  # lazy path checks shapes too


def test_clt_decoder_with_wrong_target_count(make_ct_clt):
    root, raw = make_ct_clt()
    save_file({"W_dec_1": torch.zeros(raw.F, raw.L, raw.d)}, str(root / "W_dec_1.safetensors"))
    with pytest.raises(ShapeMismatchError, match=r"W_dec_1.safetensors: tensor 'W_dec_1'.*expected \[10, 2, 6\]"):
        load_transcoders(str(root))


def test_missing_and_unexpected_tensors(make_ct_plt):
    root, raw = make_ct_plt()
    _rewrite(root, raw, 2, b_enc=None)
    with pytest.raises(TranscoderFormatError, match="layer_2.safetensors: missing tensor.*'b_enc'"):
        load_transcoders(str(root))
    _rewrite(root, raw, 2, extra=torch.zeros(3))
    with pytest.raises(TranscoderFormatError, match="layer_2.safetensors: unexpected tensor.*'extra'"):
        load_transcoders(str(root))


def test_missing_layer_file_gap(make_ct_plt, make_ct_clt):
    root, _ = make_ct_plt(L=4)
    (root / "layer_2.safetensors").unlink()
    with pytest.raises(TranscoderFormatError, match="missing layer file.*layer_2.safetensors"):
        load_transcoders(str(root))
    croot, _ = make_ct_clt(L=3)
    (croot / "W_dec_2.safetensors").unlink()
    with pytest.raises(TranscoderFormatError, match="W_dec_2.safetensors"):
        load_transcoders(str(croot))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "bad_json"])
def test_corrupt_file(make_ct_plt, damage):
    root, _ = make_ct_plt()
    path = root / "layer_1.safetensors"
    data = path.read_bytes()
    path.write_bytes({"truncate": data[:-17], "garbage": b"\x93NUMPY not a safetensors file at all",
                      "empty": b"", "bad_json": data[:9] + b"#" + data[10:]}[damage])
    with pytest.raises(TranscoderFormatError, match="layer_1.safetensors"):
        load_transcoders(str(root))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights(make_ct_plt, bad):
    root, raw = make_ct_plt()
    w = raw.layers[0]["W_enc"].clone()
    w[4, 1] = bad
    _rewrite(root, raw, 0, W_enc=w)
    with pytest.raises(TranscoderFormatError, match="layer_0.safetensors: tensor 'W_enc' holds NaN or inf .*row 4"):
        load_transcoders(str(root))


def test_integer_dtype(make_ct_plt, make_ct_clt):
    root, raw = make_ct_plt()
    _rewrite(root, raw, 1, b_dec=torch.zeros(6, dtype=torch.int32))
    with pytest.raises(TranscoderFormatError, match="layer_1.safetensors: tensor 'b_dec' has non-floating dtype"):
        load_transcoders(str(root))
    croot, craw = make_ct_clt()
    save_file({"W_dec_0": torch.zeros(craw.F, craw.L, craw.d, dtype=torch.int64)}, str(croot / "W_dec_0.safetensors"))
    with pytest.raises(TranscoderFormatError, match="W_dec_0.safetensors: tensor 'W_dec_0' has non-floating"):
        load_transcoders(str(croot))  # lazy decoders are dtype-checked at load


def test_unequal_features_across_layers(make_ct_plt):
    root, _ = make_ct_plt(L=2)
    g = torch.Generator().manual_seed(0)
    save_file({"W_enc": torch.randn(12, 6, generator=g), "W_dec": torch.randn(12, 6, generator=g),
               "b_enc": torch.zeros(12), "b_dec": torch.zeros(6)}, str(root / "layer_1.safetensors"))
    with pytest.raises(ShapeMismatchError, match="layer_1.safetensors: has 12 features.*layer_0.safetensors has 10"):
        load_transcoders(str(root))


def test_mixed_thresholds_across_layers(make_ct_plt):
    root, raw = make_ct_plt(threshold=True)
    _rewrite(root, raw, 2, **{"activation_function.threshold": None})
    with pytest.raises(TranscoderFormatError, match="layer_2.safetensors: has no threshold"):
        load_transcoders(str(root))


def test_bad_config(make_ct_plt, tmp_path):
    root, _ = make_ct_plt()
    (root / "config.yaml").write_text(yaml.safe_dump({"model_kind": "sae", "feature_input_hook": "a",
                                                      "feature_output_hook": "b"}))
    with pytest.raises(TranscoderFormatError, match="config.yaml: key 'model_kind'"):
        load_transcoders(str(root))
    (root / "config.yaml").write_text("model_kind: transcoder_set\nfeature_input_hook: a\n")
    with pytest.raises(TranscoderFormatError, match="'feature_output_hook'"):
        load_transcoders(str(root))
    (root / "config.yaml").write_text(":\n  - [unbalanced")
    with pytest.raises(TranscoderFormatError, match="config.yaml: cannot parse YAML"):
        load_transcoders(str(root))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TranscoderFormatError, match="no circuit_atlas_transcoders.json .* or config.yaml"):
        load_transcoders(str(tmp_path / "empty"))


def test_topk_without_k(make_ct_plt):
    root, _ = make_ct_plt(config_extra={"activation": "topk"})
    with pytest.raises(TranscoderFormatError, match="config.yaml: activation 'topk' needs key 'k'"):
        load_transcoders(str(root))


def test_bad_dtype_argument(make_ct_plt):
    root, _ = make_ct_plt()
    with pytest.raises(TranscoderFormatError, match="dtype"):
        load_transcoders(str(root), dtype=torch.int8)
    with pytest.raises(TranscoderFormatError, match="dtype"):
        load_transcoders(str(root), dtype="float33")
