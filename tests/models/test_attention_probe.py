"""The probe's per-vector queries and keys add up to the query and key of the real pass.

Residual vectors at the layer's input are split into random parts; their projections plus the
constants must equal the query and key the attention function received in the clean pass, on
every family, for a sliced probe (two positions) and a whole-prompt probe (as many positions as
heads, where q/k-norm layouts are ambiguous).
"""

from __future__ import annotations

import pytest
import torch

from circuit_atlas.errors import ShapeMismatchError
from circuit_atlas.models.attention import observe_attention
from circuit_atlas.models.attention_probe import project_queries_keys
from circuit_atlas.models.tiny import tiny_language_model

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "gemma3_multimodal", "gpt2"]


def _clean(lm, tokens, layer):
    calls, residual = {}, {}

    def keep_residual(module, args, kwargs):
        residual["x"] = (args[0] if args else kwargs["hidden_states"]).detach()

    handle = lm.adapter.layer_modules(lm.hf_model)[layer].register_forward_pre_hook(keep_residual, with_kwargs=True)
    try:
        with torch.no_grad(), observe_attention(lambda call: calls.__setitem__(call.layer, call)):
            record = lm.forward(tokens[None])
    finally:
        handle.remove()
    return record, calls[layer], residual["x"][0]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("length", [4, 11])  # 4 = n_heads: whole-prompt probe; 11: two positions
def test_parts_project_to_the_real_query_and_key(family, length):
    lm = tiny_language_model(family, seed=1, n_layers=3, n_heads=4, n_kv_heads=2)
    tokens = torch.randint(4, 60, (length,), generator=torch.Generator().manual_seed(length))
    tokens[0] = 1
    layer, query, key = 2, length - 1, length - 3
    record, call, x = _clean(lm, tokens, layer)
    generator = torch.Generator().manual_seed(0)
    query_parts = torch.randn(3, x.shape[-1], generator=generator)
    query_parts[-1] = x[query] - query_parts[:-1].sum(0)
    key_parts = torch.randn(4, x.shape[-1], generator=generator)
    key_parts[-1] = x[key] - key_parts[:-1].sum(0)
    projection = project_queries_keys(lm, record, layer, query_position=query, key_position=key,
                                      query_vectors=query_parts, key_vectors=key_parts)
    assert projection.query.shape == (3, 4, call.query.shape[-1])
    assert torch.allclose(projection.query.sum(0) + projection.query_constant, call.query[0, :, query], atol=1e-5)
    assert torch.allclose(projection.key.sum(0) + projection.key_constant, call.key[0, :, key], atol=1e-5)
    assert projection.scaling == call.scaling and projection.softcap == call.softcap


def test_positions_are_checked():
    lm = tiny_language_model("llama", seed=1, n_layers=2)
    tokens = torch.tensor([1, 5, 6, 7])
    record, _, _ = _clean(lm, tokens, 1)
    with pytest.raises(ShapeMismatchError, match="query_position 4 is outside 0..3"):
        project_queries_keys(lm, record, 1, query_position=4, key_position=0,
                             query_vectors=torch.zeros(0, 64), key_vectors=torch.zeros(0, 64))
