"""Adding a model family is one `FamilyAdapter` row: a Llama-layout model under a class name of
its own, with a norm class of its own, is refused until its row is registered, and then runs
like any supported family (transformers' own logits, every norm found and freezable)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm

import circuit_atlas
from circuit_atlas.errors import UnsupportedArchitectureError
from circuit_atlas.models import (
    ADAPTERS,
    FreezeSpec,
    LanguageModel,
    register_adapter,
    supported_architectures,
)
from circuit_atlas.models.tiny import tiny_language_model
from circuit_atlas.transcoders import random_transcoders


class ToyRMSNorm(LlamaRMSNorm):
    """A norm class no adapter knows (same computation as Llama's)."""


class ToyForCausalLM(LlamaForCausalLM):
    """An architecture no adapter knows."""


@pytest.fixture()
def toy():
    lm = tiny_language_model("llama", seed=3, n_layers=2, d_model=32)
    model = lm.hf_model
    model.__class__ = ToyForCausalLM
    for module in model.modules():
        if type(module) is LlamaRMSNorm:
            module.__class__ = ToyRMSNorm
    return model, lm.tokenizer


@pytest.fixture()
def toy_row():
    row = dataclasses.replace(ADAPTERS["llama"], family="toy", architectures=("ToyForCausalLM",),
                              norms={"ToyRMSNorm": "rms"})
    yield row
    ADAPTERS.pop("toy", None)


def test_a_new_family_is_one_adapter_row(toy, toy_row):
    model, tokenizer = toy
    with pytest.raises(UnsupportedArchitectureError, match="'ToyForCausalLM' is not supported"):
        LanguageModel.from_hf(model, tokenizer, "toy")
    register_adapter(toy_row)
    assert "ToyForCausalLM" in supported_architectures()
    lm = LanguageModel.from_hf(model, tokenizer, "toy")
    assert lm.family == "toy"
    assert len(lm._norms) == 2 * lm.n_layers + 1  # both sublayer norms of each layer + final
    ids = lm.tokenize("the capital of France is Paris")
    with torch.no_grad():
        theirs = model(ids[None]).logits[0]
        live = lm.forward(ids)
        frozen = lm.forward(ids, freeze=FreezeSpec.replayed(live))
    assert torch.allclose(live.logits[0], theirs, atol=1e-5)
    assert torch.equal(frozen.logits, live.logits)
    # and the rest of the package takes it as it is
    tc = random_transcoders("clt", n_layers=2, d_model=32, n_features=16, seed=1)
    graph = circuit_atlas.attribute(circuit_atlas.load(lm, tc), ids, progress=False)
    assert graph.model_name == "toy" and graph.n_layers == 2


def test_a_row_must_declare_how_its_norms_compute(toy_row):
    with pytest.raises(UnsupportedArchitectureError, match="'cube'"):
        dataclasses.replace(toy_row, norms={"ToyRMSNorm": "cube"})


def test_the_family_norm_table_decides(toy, toy_row):
    model, tokenizer = toy
    register_adapter(dataclasses.replace(toy_row, norms={"LlamaRMSNorm": "rms"}))
    with pytest.raises(UnsupportedArchitectureError, match="'ToyRMSNorm'.*LlamaRMSNorm"):
        LanguageModel.from_hf(model, tokenizer, "toy")
