"""Precise errors for models we cannot hook: missing modules, unknown norms, unavailable devices.

A checkpoint of a supported class can still differ from the layout its adapter names; these tests
break a tiny model in the ways that happen in practice and check the user is told which family,
which module path and which class, instead of torch's bare AttributeError.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from circuit_atlas.errors import ModelLoadError, UnsupportedArchitectureError
from circuit_atlas.models import LanguageModel, load_language_model
from circuit_atlas.models.language_model import available_devices, check_device
from circuit_atlas.models.norms import apply_norm, inverse_scale, norm_kind
from circuit_atlas.models.tiny import tiny_language_model


@pytest.fixture
def lm():
    torch.set_num_threads(1)
    return tiny_language_model("llama", seed=5, n_layers=2, d_model=32)


def _wrap(lm) -> LanguageModel:
    return LanguageModel.from_hf(lm.hf_model, lm.tokenizer, name="broken")


def test_missing_layer_module_names_family_path_and_class(lm):
    del lm.hf_model.model.layers[1].post_attention_layernorm
    with pytest.raises(UnsupportedArchitectureError) as info:
        _wrap(lm)
    message = str(info.value)
    assert "'llama'" in message and "LlamaForCausalLM" in message
    assert "'model.layers.1.post_attention_layernorm'" in message
    assert "LlamaDecoderLayer has no submodule 'post_attention_layernorm'" in message


def test_missing_top_level_module_is_reported_at_wrap_time(lm):
    del lm.hf_model.model.norm
    with pytest.raises(UnsupportedArchitectureError, match=r"'model\.norm' is missing \(LlamaModel has no"):
        _wrap(lm)


def test_attribute_that_is_not_a_module(lm):
    layer = lm.hf_model.model.layers[0]
    del layer.mlp
    layer.mlp = "not a module"
    with pytest.raises(UnsupportedArchitectureError, match="non-module attribute 'mlp'"):
        _wrap(lm)


def test_layers_that_are_not_a_module_list(lm):
    lm.hf_model.model.layers = nn.Sequential(*lm.hf_model.model.layers)
    with pytest.raises(UnsupportedArchitectureError, match="list of decoder layers but is a Sequential"):
        _wrap(lm)


def test_lookup_after_wrapping_uses_the_same_error(lm):
    """A module removed after the wrap check still fails with the precise error, not torch's."""
    wrapped = _wrap(lm)
    del wrapped.hf_model.model.layers[0].mlp
    with pytest.raises(UnsupportedArchitectureError, match=r"'model\.layers\.0\.mlp' is missing"):
        wrapped.layer_module(0, "mlp")


class FancyNorm(nn.Module):
    """A norm class no adapter knows (no children, 'Norm' in its name)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x


def test_unknown_norm_class_is_rejected_when_wrapping(lm):
    lm.hf_model.model.layers[0].input_layernorm = FancyNorm(32)
    with pytest.raises(UnsupportedArchitectureError) as info:
        _wrap(lm)
    message = str(info.value)
    assert "'FancyNorm'" in message and "LlamaRMSNorm" in message


def test_norm_kind_ignores_containers_and_non_norms():
    kinds = {"LlamaRMSNorm": "rms"}
    assert norm_kind(nn.Linear(2, 2), kinds) is None
    container = type("WrapperNorm", (nn.Module,), {})()
    container.inner = nn.Linear(2, 2)  # has children: a container, not a norm implementation
    assert norm_kind(container, kinds) is None
    with pytest.raises(UnsupportedArchitectureError, match="'Gemma2RMSNorm'.*LlamaRMSNorm"):
        norm_kind(type("Gemma2RMSNorm", (nn.Module,), {})(), kinds)  # another family's class


def test_norm_without_epsilon_and_unknown_kind():
    odd = type("LlamaRMSNorm", (nn.Module,), {})()  # right name, no eps attribute
    odd.weight = nn.Parameter(torch.ones(4))
    with pytest.raises(UnsupportedArchitectureError, match="no epsilon attribute"):
        inverse_scale("rms", odd, torch.ones(1, 4))
    with pytest.raises(UnsupportedArchitectureError, match="unknown norm kind 'cube'"):
        apply_norm("cube", odd, torch.ones(1, 4), torch.ones(1, 1))


# --------------------------------------------------------------------------- devices
def test_bad_device_names_fail_before_the_model_is_read(tmp_path):
    # The directory does not exist: reaching it would give a different error.
    with pytest.raises(ModelLoadError, match="'banana' is not a device name.*available here: cpu"):
        load_language_model(tmp_path / "missing", device="banana")
    with pytest.raises(ModelLoadError, match="'meta' is not supported"):
        check_device("meta")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_load_error(tmp_path, lm):
    with pytest.raises(ModelLoadError, match="'cuda' is not available"):
        load_language_model(tmp_path / "missing", device="cuda")
    with pytest.raises(ModelLoadError, match="'cuda:0' is not available"):
        lm.to(device="cuda:0")  # the path circuit_atlas.load takes for a LanguageModel
    assert lm.device.type == "cpu"


def test_gpu_index_is_checked_against_the_gpu_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert available_devices()[:3] == ["cpu", "cuda:0", "cuda:1"]
    assert check_device("cuda:1") == torch.device("cuda:1")
    assert check_device("cuda") == torch.device("cuda")
    with pytest.raises(ModelLoadError, match=r"'cuda:2' does not exist: this machine has 2 CUDA GPU\(s\) "
                                             r"\(available here: cpu, cuda:0, cuda:1"):
        check_device("cuda:2")


def test_valid_devices_pass():
    assert check_device(None) is None
    assert check_device("cpu") == torch.device("cpu")
    assert check_device(torch.device("cpu")) == torch.device("cpu")
