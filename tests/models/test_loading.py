"""Loading models, prompts and the errors users get for bad inputs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from circuit_atlas.errors import (
    CircuitAtlasError,
    ModelLoadError,
    PromptError,
    UnsupportedArchitectureError,
)
from circuit_atlas.models import LanguageModel, load_language_model, supported_architectures
from circuit_atlas.models.adapters import GEMMA3_CHAT
from circuit_atlas.models.prompts import special_prefix_id, to_ids
from circuit_atlas.models.tiny import tiny_language_model


@pytest.fixture(scope="module")
def lm():
    torch.set_num_threads(1)
    return tiny_language_model("llama", seed=3)


def test_string_gets_bos_and_ids_are_used_as_given(lm):
    bos = lm.tokenizer.bos_token_id
    ids = lm.tokenize("the cat")
    assert ids.tolist() == [bos] + lm.tokenizer.encode("the cat", add_special_tokens=False)
    assert ids.tolist()[1:] == [lm.tokenizer.convert_tokens_to_ids(w) for w in ("the", "cat")]
    # already starts with a special token: nothing prepended
    assert lm.tokenize("<bos> the cat").tolist() == ids.tolist()
    assert lm.tokenize([5, 6, 7]).tolist() == [5, 6, 7]
    assert lm.tokenize(torch.tensor([[5, 6]])).tolist() == [5, 6]
    assert lm.token_strings([ids[1]]) == [" the"]  # as it reads in text


def test_prefix_rule_skips_falsy_ids():
    assert special_prefix_id(SimpleNamespace(bos_token_id=None, pad_token_id=0, eos_token_id=2)) == 2
    assert special_prefix_id(SimpleNamespace(bos_token_id=7, pad_token_id=0, eos_token_id=2)) == 7
    assert special_prefix_id(SimpleNamespace(bos_token_id=None, pad_token_id=None, eos_token_id=None)) is None


@pytest.mark.parametrize(
    "prompt, words",
    [
        ("", "empty"),
        ("   ", "no tokens"),
        ([], "empty"),
        ([1, 5, 10_000], "outside the vocabulary"),
        ([1, -3], "outside the vocabulary"),
        ([[1, 2], [3, 4]], "1-D"),
        ([1.5, 2.0], "integers"),
    ],
)
def test_bad_prompts(lm, prompt, words):
    with pytest.raises(PromptError, match=words):
        lm.tokenize(prompt)


def test_too_long_prompt(lm):
    assert lm.max_positions == 64
    lm.tokenize([1] * 64)
    with pytest.raises(PromptError, match="65 tokens"):
        lm.tokenize([1] * 65)


def test_chat_prefix_is_required_when_given():
    header = GEMMA3_CHAT.ids
    ok = to_ids([*header, 9], None, vocab_size=300_000, max_positions=None,
                model_name="google/gemma-3-1b-it", required_prefix=header)
    assert ok.tolist() == [2, 105, 2364, 107, 9]
    with pytest.raises(PromptError, match="start_of_turn"):
        to_ids([2, 9, 9, 9], None, vocab_size=300_000, max_positions=None,
               model_name="google/gemma-3-1b-it", required_prefix=header)
    # without a required prefix the same ids are fine, whatever the name says
    assert to_ids([2, 9, 9, 9], None, vocab_size=300_000, max_positions=None,
                  model_name="google/gemma-3-1b-it").tolist() == [2, 9, 9, 9]


@pytest.mark.parametrize("family", ["gemma3", "gemma3_multimodal"])
def test_instruction_tuned_gemma3_is_recognised_from_the_checkpoint_not_the_name(family, tmp_path):
    base = tiny_language_model(family)
    assert base.chat_prefix is None and base.n_zeroed_positions == 1
    # The name alone changes nothing (a pretrained checkpoint stays pretrained)...
    named = LanguageModel.from_hf(base.hf_model, base.tokenizer, "google/gemma-3-1b-it")
    assert named.n_zeroed_positions == 1
    # ...what marks an instruction-tuned checkpoint is that generation stops at <end_of_turn>
    base.hf_model.generation_config.eos_token_id = [1, GEMMA3_CHAT.end_of_turn]
    tuned = LanguageModel.from_hf(base.hf_model, base.tokenizer, "my-finetune")
    assert tuned.chat_prefix == GEMMA3_CHAT.ids and tuned.n_zeroed_positions == 4
    with pytest.raises(PromptError, match="chat header"):
        tuned.tokenize([1, 5, 6])
    if family == "gemma3":  # and a saved local copy keeps it, whatever its folder is called
        tuned.save(tmp_path / "copy")
        assert load_language_model(tmp_path / "copy").n_zeroed_positions == 4


def test_llama_has_no_chat_prefix():
    llama = tiny_language_model("llama", n_layers=1, d_model=16)
    llama.hf_model.generation_config.eos_token_id = [2, 106]  # id 106 means nothing to Llama
    assert LanguageModel.from_hf(llama.hf_model, llama.tokenizer, "x").n_zeroed_positions == 1


def test_save_and_load_round_trip(lm, tmp_path):
    lm.save(tmp_path / "tiny")
    loaded = load_language_model(tmp_path / "tiny")
    assert loaded.family == "llama" and loaded.n_layers == lm.n_layers
    ids = lm.tokenize("the capital of France is Paris")
    assert loaded.tokenize("the capital of France is Paris").tolist() == ids.tolist()
    with torch.no_grad():
        diff = (loaded.forward(ids).logits - lm.forward(ids).logits).abs().max().item()
    assert diff <= 1e-6
    half = load_language_model(str(tmp_path / "tiny"), dtype="bfloat16")
    assert half.dtype == torch.bfloat16
    with torch.no_grad():
        assert half.forward(ids).logits.dtype == torch.bfloat16


def test_missing_directory_and_bad_dtype(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_language_model(tmp_path / "nowhere")
    with pytest.raises(ModelLoadError, match="config"):
        load_language_model(tmp_path)  # exists but holds no model
    with pytest.raises(CircuitAtlasError, match="float64x"):
        load_language_model(tmp_path, dtype="float64x")


def test_unknown_architecture(tmp_path):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=16)
    model = GPTNeoXForCausalLM(config)
    with pytest.raises(UnsupportedArchitectureError, match="GPTNeoXForCausalLM") as info:
        LanguageModel.from_hf(model, None, "neox")
    for name in supported_architectures():
        assert name in str(info.value)
    config.architectures = ["GPTNeoXForCausalLM"]
    config.save_pretrained(tmp_path)  # config only: must fail before looking for weights
    with pytest.raises(UnsupportedArchitectureError, match="GPTNeoXForCausalLM"):
        load_language_model(tmp_path)


def test_unsupported_hook_names(lm):
    ids = lm.tokenize("the cat")
    with pytest.raises(UnsupportedArchitectureError, match="hook_attn_out"):
        lm.forward(ids, input_hook="hook_attn_out")
    with pytest.raises(UnsupportedArchitectureError, match="output hook"):
        lm.forward(ids, output_hook="hook_resid_mid")


def test_image_text_gemma3_round_trip(tmp_path):
    """Gemma-3 4B+ checkpoints are Gemma3ForConditionalGeneration; we load and use the text tower."""
    lm = tiny_language_model("gemma3_multimodal")
    lm.save(tmp_path)
    loaded = load_language_model(tmp_path)
    assert type(loaded.hf_model).__name__ == "Gemma3ForConditionalGeneration"
    assert loaded.d_model == 64 and loaded.vocab_size == len(lm.tokenizer) + 3
    ids = loaded.tokenize("the cat")
    with torch.no_grad():
        assert torch.equal(loaded.forward(ids).logits, lm.forward(ids).logits)


def test_cached_step_refuses_a_length_without_its_cache():
    from circuit_atlas.errors import CircuitAtlasError

    lm = tiny_language_model("llama", seed=0)
    ids = lm.tokenize("the cat")
    logits, cache = lm.cached_step(ids)
    assert logits.shape == (lm.vocab_size,) and cache is not None
    with pytest.raises(CircuitAtlasError, match="past_length"):
        lm.cached_step(ids[-1:], None, past_length=int(ids.shape[0]))
    with pytest.raises(CircuitAtlasError, match="past_length"):
        lm.cached_step(ids[-1:], cache)
