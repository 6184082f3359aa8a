"""The instrumented forward pass: same logits as transformers, hook points, freezing.

Hook values are checked against PyTorch hooks the test installs itself on module paths it names
itself (not through our adapter table), so a wrong adapter entry fails here.
"""

from __future__ import annotations

import pytest
import torch

from circuit_atlas.models import ALL_HOOKS, FreezeSpec
from circuit_atlas.models.tiny import tiny_language_model

FAMILIES = ["gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "gemma3_multimodal"]
PROMPT = "the capital of France is Paris and the capital of Spain is Madrid ."

# Module paths written out independently of circuit_atlas.models.adapters.
LAYER_PATH = {"gpt2": "transformer.h.{}", "gemma3_multimodal": "model.language_model.layers.{}"}
GEMMAS = ("gemma2", "gemma3", "gemma3_multimodal")
PRE_MLP_NORM = {"gpt2": "ln_2", **{g: "pre_feedforward_layernorm" for g in GEMMAS}}
POST_MLP_NORM = {g: "post_feedforward_layernorm" for g in GEMMAS}


def layer_path(family: str, layer: int) -> str:
    return LAYER_PATH.get(family, "model.layers.{}").format(layer)


@pytest.fixture(scope="module", params=FAMILIES)
def lm(request):
    torch.set_num_threads(1)
    return tiny_language_model(request.param, seed=1)


@pytest.fixture(scope="module")
def tokens(lm):
    return lm.tokenize(PROMPT)


def capture(module, store: dict, key: str, *, inputs: bool):
    """Register a test-owned hook storing a module's first input or its output."""
    if inputs:
        return module.register_forward_pre_hook(lambda m, a: store.__setitem__(key, a[0].detach()))
    return module.register_forward_hook(lambda m, a, o: store.__setitem__(key, o.detach()))


def test_logits_match_transformers(lm, tokens):
    assert tokens.numel() > 4 * 2  # longer than the sliding windows of the tiny configs
    with torch.no_grad():
        expected = lm.hf_model(input_ids=tokens[None]).logits
        record = lm.forward(tokens)
    assert record.logits.shape == expected.shape
    assert (record.logits - expected).abs().max().item() <= 1e-4
    assert expected.std() > 0.3  # non-degenerate model


def test_hook_points_match_module_tensors(lm, tokens):
    family = lm.family
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for layer in range(lm.n_layers):
        base = lm.hf_model.get_submodule(layer_path(family, layer))
        norm = base.get_submodule(PRE_MLP_NORM.get(family, "post_attention_layernorm"))
        handles += [
            capture(norm, seen, f"norm_in{layer}", inputs=True),
            capture(base.mlp, seen, f"mlp_in{layer}", inputs=True),
            capture(base.mlp, seen, f"mlp_out{layer}", inputs=False),
            capture(base, seen, f"block_in{layer}", inputs=True),
            capture(base, seen, f"block_out{layer}", inputs=False),
        ]
        if family in POST_MLP_NORM:
            post = base.get_submodule(POST_MLP_NORM[family])
            handles.append(capture(post, seen, f"post_out{layer}", inputs=False))
    try:
        with torch.no_grad():
            record = lm.forward(tokens, record_hooks=ALL_HOOKS)
    finally:
        for h in handles:
            h.remove()

    def close(a, b):
        return (a - b).abs().max().item() <= 1e-5

    assert close(record.embeddings, seen["block_in0"])
    for layer in range(lm.n_layers):
        hooks = {name: record.hooks[name][layer] for name in ALL_HOOKS}
        assert close(hooks["hook_resid_mid"], seen[f"norm_in{layer}"])
        assert close(hooks["mlp.hook_in"], seen[f"mlp_in{layer}"])
        assert close(hooks["mlp.hook_out"], seen[f"mlp_out{layer}"])
        # what the MLP sub-layer adds to the residual stream
        assert close(hooks["hook_mlp_out"], seen[f"block_out{layer}"] - seen[f"norm_in{layer}"])
        if family in POST_MLP_NORM:
            assert close(hooks["hook_mlp_out"], seen[f"post_out{layer}"])
            assert not close(hooks["hook_mlp_out"], hooks["mlp.hook_out"])
        else:
            assert close(hooks["hook_mlp_out"], hooks["mlp.hook_out"])
        assert close(record.inputs[layer], hooks["hook_resid_mid"])  # default input hook
        assert close(record.outputs[layer], hooks["hook_mlp_out"])  # default output hook


def test_normalized_times_gain_is_mlp_input(lm, tokens):
    family = lm.family
    with torch.no_grad():
        record = lm.forward(tokens, record_hooks=["ln2.hook_normalized", "mlp.hook_in", "hook_resid_mid"])
    for layer in range(lm.n_layers):
        base = lm.hf_model.get_submodule(layer_path(family, layer))
        norm = base.get_submodule(PRE_MLP_NORM.get(family, "post_attention_layernorm"))
        normalized = record.hooks["ln2.hook_normalized"][layer]
        resid = record.hooks["hook_resid_mid"][layer]
        if family == "gpt2":
            expected = (resid - resid.mean(-1, keepdim=True)) / torch.sqrt(
                resid.var(-1, unbiased=False, keepdim=True) + norm.eps)
            rebuilt = normalized * norm.weight + norm.bias
        else:
            expected = resid / torch.sqrt(resid.pow(2).mean(-1, keepdim=True) + (
                norm.eps if hasattr(norm, "eps") else norm.variance_epsilon))
            gain = 1 + norm.weight if family.startswith("gemma") else norm.weight
            rebuilt = normalized * gain
        assert (normalized - expected).abs().max().item() <= 1e-5
        assert (rebuilt - record.hooks["mlp.hook_in"][layer]).abs().max().item() <= 1e-5
        assert (normalized - record.hooks["mlp.hook_in"][layer]).abs().max().item() > 1e-2  # gain matters


def test_replay_uses_recorded_patterns_and_scales(lm, tokens):
    with torch.no_grad():
        clean = lm.forward(tokens)
        replayed = lm.forward(tokens, freeze=FreezeSpec.replayed(clean))
        assert (replayed.logits - clean.logits).abs().max().item() <= 1e-5
        # Replaying altered patterns must change the output: the replay is really used.
        uniform = {}
        for layer, pattern in clean.attention_patterns.items():
            causal = torch.tril(torch.ones_like(pattern))
            uniform[layer] = causal / causal.sum(-1, keepdim=True)
        altered = type(clean)(**{**clean.__dict__, "attention_patterns": uniform})
        changed = lm.forward(tokens, freeze=FreezeSpec(attention="replay", replay_from=altered))
        assert (changed.logits - clean.logits).abs().max().item() > 1e-3
        # and so must altered norm scales
        doubled = {k: 2 * v for k, v in clean.norm_scales.items()}
        altered = type(clean)(**{**clean.__dict__, "norm_scales": doubled})
        changed = lm.forward(tokens, freeze=FreezeSpec(norms="replay", replay_from=altered))
        assert (changed.logits - clean.logits).abs().max().item() > 1e-3
    # every norm module (incl. q/k norms and the final norm) has a recorded scale
    n_norms = sum(
        1 for name, m in lm.hf_model.named_modules()
        if type(m).__name__.endswith(("RMSNorm", "LayerNorm"))
        and not name.startswith(("model.vision_tower", "model.multi_modal_projector"))
    )
    assert len(clean.norm_scales) == n_norms
    assert sorted(clean.attention_patterns) == list(range(lm.n_layers))


def _frozen_map(lm, tokens, clean, spec):
    """(embeddings, output-hook values) -> (final_hidden, inputs) with the MLPs cut out."""

    def f(emb, outs):
        record = lm.forward(
            tokens,
            freeze=spec,
            embedding_edit=lambda _: emb,
            output_edit=lambda layer, x, y: outs[layer],
            compute_logits=False,
        )
        return torch.cat([record.final_hidden.flatten()] + [t.flatten() for t in record.inputs])

    return f


def test_frozen_map_is_affine_and_live_map_is_not(lm, tokens):
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        clean = lm.forward(tokens)
        scale = clean.embeddings.std()

        def rand(t):
            return torch.randn(t.shape, generator=gen).to(t.device) * scale

        a_emb, b_emb = rand(clean.embeddings), rand(clean.embeddings)
        a_out = [rand(t) for t in clean.outputs]
        b_out = [rand(t) for t in clean.outputs]
        zero_emb = torch.zeros_like(clean.embeddings)
        zero_out = [torch.zeros_like(t) for t in clean.outputs]
        for spec, expect_affine in ((FreezeSpec.replayed(clean), True), (FreezeSpec(), False)):
            f = _frozen_map(lm, tokens, clean, spec)
            f0 = f(zero_emb, zero_out)
            fa = f(a_emb, a_out) - f0
            fb = f(b_emb, b_out) - f0
            fab = f(a_emb + b_emb, [x + y for x, y in zip(a_out, b_out)]) - f0
            gap = (fab - fa - fb).abs().max().item() / fab.abs().max().item()
            if expect_affine:
                assert gap <= 1e-5
            else:
                assert gap > 1e-2


def test_detached_gradients_equal_replayed_gradients(lm, tokens):
    """'detach' (computed in this pass) and 'replay' (copied) freeze the same linear map."""
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        clean = lm.forward(tokens)
    v = torch.randn(clean.final_hidden.shape, generator=gen).to(clean.final_hidden.device)

    def grad_for(spec):
        leaf = {}

        def make_leaf(emb):
            leaf["emb"] = emb.detach().requires_grad_(True)
            return leaf["emb"]

        record = lm.forward(tokens, freeze=spec, embedding_edit=make_leaf, compute_logits=False,
                            output_edit=lambda layer, x, y: y.detach())
        (grad,) = torch.autograd.grad((record.final_hidden * v).sum(), leaf["emb"])
        return grad

    detached = grad_for(FreezeSpec.detached())
    replayed = grad_for(FreezeSpec.replayed(clean))
    live = grad_for(FreezeSpec())
    scale = replayed.abs().max().item()
    assert (detached - replayed).abs().max().item() <= 1e-5 * scale
    assert (live - replayed).abs().max().item() > 1e-3 * scale


@pytest.mark.parametrize("family, dtype", [
    ("gpt2", torch.bfloat16), ("gemma2", torch.bfloat16), ("qwen3", torch.bfloat16),
    ("llama", torch.float16), ("gemma2", torch.float16),
])
def test_half_precision_matches_transformers(family, dtype):
    half = tiny_language_model(family, seed=1, dtype=dtype)
    ids = half.tokenize(PROMPT)
    with torch.no_grad():
        expected = half.hf_model(input_ids=ids[None]).logits.float()
        record = half.forward(ids, record_hooks=["ln2.hook_normalized"])
    assert record.logits.dtype == dtype
    assert record.hooks["ln2.hook_normalized"][0].dtype == dtype
    assert (record.logits.float() - expected).abs().max().item() <= 2e-2
