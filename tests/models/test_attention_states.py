"""O(P) attention states: blockwise live attention and the frozen-attention value path.

Checked against the `[B,H,P,P]` pattern path that records and replays whole patterns: the clean
pass's logits, every recomputed pattern, a frozen pass's values, its batched gradients (vmap, as
attribution takes them) and its forward-mode tangents. Blocks are made tiny so that queries and
keys span many tiles, partial (masked) tiles and, for Gemma-2, sliding-window tiles that are
skipped altogether.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import forward_ad

from circuit_atlas.models import FreezeSpec
from circuit_atlas.models import attention as attention_module
from circuit_atlas.models.freeze import prefix_record
from circuit_atlas.models.tiny import tiny_language_model

FAMILIES = ["llama", "gemma2", "qwen3", "gpt2"]  # GQA; soft-cap + sliding window; q/k norms; MHA


@pytest.fixture(autouse=True)
def tiny_blocks(monkeypatch):
    monkeypatch.setattr(attention_module, "BLOCK_ELEMENTS", 4 * 8 * 8)
    monkeypatch.setattr(attention_module, "LIVE_ROW_ELEMENTS", 4 * 20 * 3)


def _model_and_tokens(family: str, length: int = 29):
    lm = tiny_language_model(family, seed=1, n_layers=2, d_model=32, max_positions=64)
    tokens = torch.randint(4, lm.vocab_size, (1, length), generator=torch.Generator().manual_seed(2))
    return lm, tokens.to(lm.device)


@pytest.mark.parametrize("family", FAMILIES)
def test_states_reproduce_the_patterns_and_the_clean_pass(family):
    lm, tokens = _model_and_tokens(family, length=61)
    with torch.no_grad():
        patterns = lm.forward(tokens)
        states = lm.forward(tokens, attention_states=True)
    assert not states.attention_patterns and len(states.attention_states) == lm.n_layers
    torch.testing.assert_close(states.logits, patterns.logits, rtol=1e-5, atol=1e-5)
    for layer, state in states.attention_states.items():
        torch.testing.assert_close(state.pattern(), patterns.attention_patterns[layer], rtol=1e-5, atol=1e-6)
        assert state.mask is None  # causal and sliding-window masks are key intervals
    if family == "gemma2":  # the sliding layer skips whole tiles outside its window
        sliding = states.attention_states[0]
        assert len(sliding.blocks()) < len(states.attention_states[1].blocks())


def _frozen(lm, record, tokens, copies: int):
    leaf = {}

    def edit(embedding):
        leaf["x"] = embedding.detach().requires_grad_(True)
        return leaf["x"]

    out = lm.forward(tokens.expand(copies, -1), freeze=FreezeSpec.replayed(record), embedding_edit=edit,
                     record_internals=False, compute_logits=False, record_residuals=True)
    return out, leaf["x"]


@pytest.mark.parametrize("family", FAMILIES)
def test_frozen_value_path_matches_the_pattern_path(family):
    lm, tokens = _model_and_tokens(family)
    with torch.no_grad():
        with_patterns = lm.forward(tokens)
        with_states = lm.forward(tokens, attention_states=True)
    readout = torch.randn(5, 1, tokens.shape[1], lm.d_model, generator=torch.Generator().manual_seed(3))
    grads = []
    for record in (with_patterns, with_states):
        out, leaf = _frozen(lm, record, tokens, copies=1)
        assert len(out.residuals) == lm.n_layers + 1 and out.residuals[0] is leaf
        (g,) = torch.autograd.grad(out.final_hidden, leaf, readout.to(leaf.device), is_grads_batched=True)
        grads.append((out.final_hidden.detach(), g))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-5)
    scale = float(grads[0][1].abs().max())
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-5, atol=1e-5 * scale)


def test_forward_mode_tangent_equals_the_reverse_mode_gradient():
    """⟨u, J v⟩ from a tangent equals ⟨Jᵀ u, v⟩ from a gradient (same frozen linear map)."""
    lm, tokens = _model_and_tokens("gemma2")
    with torch.no_grad():
        record = lm.forward(tokens, attention_states=True)
    g = torch.Generator().manual_seed(4)
    direction = torch.randn(1, tokens.shape[1], lm.d_model, generator=g).to(lm.device)
    readout = torch.randn(1, tokens.shape[1], lm.d_model, generator=g).to(lm.device)
    out, leaf = _frozen(lm, record, tokens, copies=1)
    (grad,) = torch.autograd.grad(out.final_hidden, leaf, readout)
    with torch.no_grad(), forward_ad.dual_level():
        tangent = lm.forward(tokens, freeze=FreezeSpec.replayed(record), record_internals=False,
                             compute_logits=False,
                             embedding_edit=lambda e: forward_ad.make_dual(e, direction))
        moved = forward_ad.unpack_dual(tangent.final_hidden).tangent
    torch.testing.assert_close((moved * readout).sum(), (grad * direction).sum(), rtol=1e-5, atol=1e-5)


def test_prefix_of_a_state_record_replays_the_prefix():
    lm, tokens = _model_and_tokens("gemma2")
    with torch.no_grad():
        record = lm.forward(tokens, attention_states=True)
        short = lm.forward(tokens[:, :11], freeze=FreezeSpec.replayed(prefix_record(record, 11)))
        direct = lm.forward(tokens[:, :11])
    torch.testing.assert_close(short.logits, direct.logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="shape"):
        with torch.no_grad():
            lm.forward(tokens[:, :11], freeze=FreezeSpec.replayed(record))
