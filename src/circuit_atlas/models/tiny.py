"""Tiny seeded random models of every supported family, with an offline word-level tokenizer.

Tests and demos need real transformers modules (so every code path is the production one) but no
hub access. Weights are re-initialised so activations are O(1) and every norm has a non-trivial
gain: with transformers' default 0.02-std init and unit gains, norms and soft-caps barely matter
and freezing bugs would go unnoticed.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from circuit_atlas.errors import UnsupportedArchitectureError
from circuit_atlas.models.adapters import ADAPTERS
from circuit_atlas.models.language_model import LanguageModel

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
WORDS = tuple((
    "the a an of to in is was and or not that this it on at by for with from as "
    "capital France Paris Germany Berlin Italy Rome Spain Madrid city country river "
    "Texas Dallas Austin state big small red blue green cat dog bird fish house tree "
    "one two three four five six seven eight nine ten "
    "he she they we you I his her their my "
    "said went saw had has have will would can could "
    "opposite hot cold up down . , ! ? : ; ' \" ( ) = + -"
).split())


# Names the device the tiny models go to by default (see `tiny_language_model`).
TEST_DEVICE_VARIABLE = "CIRCUIT_ATLAS_TEST_DEVICE"


def tiny_tokenizer():
    """A word-level `PreTrainedTokenizerFast` built in memory (no files, no network).

    Ids: <pad>=0, <bos>=1, <eos>=2, <unk>=3, then `WORDS`. Unknown words map to <unk>.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
    )


@dataclass(frozen=True)
class TinySize:
    """The dimensions of a tiny model."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_mlp: int
    vocab: int
    max_positions: int


def _config(family: str, size: TinySize):
    """A small config that still exercises each family's peculiarities."""
    import transformers as T

    n_layers, d_model, n_heads, n_kv_heads = size.n_layers, size.d_model, size.n_heads, size.n_kv_heads
    d_mlp, vocab, max_positions = size.d_mlp, size.vocab, size.max_positions
    head_dim = d_model // n_heads
    common = dict(
        vocab_size=vocab,
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        intermediate_size=d_mlp,
        max_position_embeddings=max_positions,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if family == "gpt2":
        return T.GPT2Config(
            vocab_size=vocab, n_embd=d_model, n_layer=n_layers, n_head=n_heads, n_inner=d_mlp,
            n_positions=max_positions, bos_token_id=1, eos_token_id=2, pad_token_id=0,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
        )
    gqa = dict(num_key_value_heads=n_kv_heads, head_dim=head_dim)
    layer_types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)]
    if family == "llama":
        return T.LlamaConfig(**common, **gqa, rms_norm_eps=1e-5, tie_word_embeddings=False,
                             rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    if family == "mistral":
        return T.MistralConfig(**common, **gqa, sliding_window=4, tie_word_embeddings=False)
    if family == "qwen2":
        return T.Qwen2Config(**common, **gqa, tie_word_embeddings=True)
    if family == "qwen3":
        return T.Qwen3Config(**common, **gqa, tie_word_embeddings=True)
    if family == "gemma2":
        return T.Gemma2Config(**common, **gqa, query_pre_attn_scalar=head_dim, sliding_window=4,
                              layer_types=layer_types, attn_logit_softcapping=3.0,
                              final_logit_softcapping=5.0, hidden_activation="gelu_pytorch_tanh")
    if family == "gemma3":
        return T.Gemma3TextConfig(**common, **gqa, query_pre_attn_scalar=head_dim, sliding_window=4,
                                  layer_types=layer_types, hidden_activation="gelu_pytorch_tanh")
    if family == "gemma3_multimodal":
        # text tower as for "gemma3"; a one-layer vision tower that is never run. Image special
        # tokens get ids past the tokenizer's vocabulary, so text prompts never contain them.
        text = _config("gemma3", dataclasses.replace(size, vocab=vocab + 3))
        vision = T.SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, image_size=28, patch_size=14)
        return T.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                              boi_token_index=vocab, eoi_token_index=vocab + 1,
                              image_token_index=vocab + 2)
    raise UnsupportedArchitectureError(
        f"no tiny config for family {family!r}; families: {', '.join(sorted(ADAPTERS))}"
    )


def _reinit(model: nn.Module, generator: torch.Generator, norms: Mapping[str, str]) -> None:
    """O(1) activations: 1/sqrt(fan_in) projections, unit-ish embeddings, varied norm gains
    (`norms`: the family's norm classes and how they compute, from its adapter row)."""
    from transformers.pytorch_utils import Conv1D

    def normal(t: torch.Tensor, std: float, mean: float = 0.0) -> None:
        with torch.no_grad():
            t.copy_(torch.randn(t.shape, generator=generator) * std + mean)

    for name, module in model.named_modules():
        cls = type(module).__name__
        if isinstance(module, nn.Linear):
            normal(module.weight, 1.0 / math.sqrt(module.in_features))
            if module.bias is not None:
                normal(module.bias, 0.1)
        elif isinstance(module, Conv1D):
            normal(module.weight, 1.0 / math.sqrt(module.weight.shape[0]))
            normal(module.bias, 0.1)
        elif isinstance(module, nn.Embedding):
            scale = getattr(module, "scalar_embed_scale", 1.0)  # Gemma multiplies by √d
            normal(module.weight, 1.0 / scale)
        elif isinstance(module, nn.LayerNorm):
            normal(module.weight, 0.3, 1.0)
            normal(module.bias, 0.1)
        elif norms.get(cls) == "rms_one_plus":
            normal(module.weight, 0.3)  # gain is (1 + w)
        elif norms.get(cls) == "rms":
            normal(module.weight, 0.3, 1.0)


def tiny_language_model(
    family: str,
    *,
    seed: int = 0,
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_mlp: int | None = None,
    max_positions: int = 64,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> LanguageModel:
    """A seeded random `LanguageModel` of `family` (one of `adapters.ADAPTERS`).

    Weights are drawn on the CPU (the same numbers on every machine) and then moved to `device`;
    left out, that is `$CIRCUIT_ATLAS_TEST_DEVICE` or "cpu", so the test suite can be rerun on a
    GPU unchanged (`CIRCUIT_ATLAS_TEST_DEVICE=cuda pytest tests/attribution`).

    Uses GQA (`n_kv_heads`) where the family has it, sliding windows of 4 on alternate layers for
    Gemma-2/3 and Mistral, attention and final soft-caps for Gemma-2, q/k norms for Qwen3/Gemma-3.
    The vocabulary is the tiny tokenizer's (`len(tiny_tokenizer())` ids; 3 more image-token ids
    for "gemma3_multimodal", an image-text `Gemma3ForConditionalGeneration` whose text tower we use).
    """
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    config = _config(family, TinySize(n_layers, d_model, n_heads, n_kv_heads, d_mlp or 4 * d_model,
                                      len(tokenizer), max_positions))
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    hf_model = AutoModelForCausalLM.from_config(config)
    generator = torch.Generator().manual_seed(seed)
    _reinit(hf_model, generator, ADAPTERS[family].norms)
    hf_model = hf_model.to(dtype=dtype, device=device or os.environ.get(TEST_DEVICE_VARIABLE, "cpu"))
    return LanguageModel.from_hf(hf_model, tokenizer, name=f"tiny-{family}")
