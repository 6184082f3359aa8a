"""Exported transcoders load through our loaders (native and circuit-tracer format) and give the
trained stack's activations and reconstructions on raw activations."""

import pytest
import torch
import yaml

from circuit_atlas.training.architecture import TranscoderStack
from circuit_atlas.training.config import ArchitectureConfig
from circuit_atlas.training.export import export_transcoders
from circuit_atlas.transcoders import load_transcoders

L, D, F = 3, 6, 10


def _trained_like_stack(kind, activation, seed=0):
    """A stack with random weights and non-trivial normalisation scales, as after training."""
    k = 3 if "topk" in activation else None
    stack = TranscoderStack(ArchitectureConfig(kind=kind, n_layers=L, d_model=D, n_features=F,
                                               activation=activation, k=k), seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in stack.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.4)
        stack.input_scale.copy_(torch.rand(L, generator=gen) * 3 + 0.2)
        stack.target_scale.copy_(torch.rand(L, generator=gen) * 3 + 0.2)
        stack.threshold_estimate.copy_(torch.rand(L, generator=gen) * 0.3)
    return stack


def _stack_reference(stack, x_raw):
    """Inference activations and raw-unit reconstruction computed by the training module."""
    x = x_raw / stack.input_scale[None, :, None]
    with torch.no_grad():
        acts = stack.activate_inference(stack.pre_activations(x))
        recon = stack.decode(acts, x) * stack.target_scale[None, :, None]
    return acts, recon


@pytest.mark.parametrize("kind,activation", [("plt", "relu"), ("plt", "jumprelu"),
                                             ("skip", "jumprelu"), ("clt", "jumprelu"),
                                             ("clt", "relu"), ("plt", "batchtopk"),
                                             ("plt", "topk"), ("skip", "topk"), ("clt", "topk")])
def test_exported_sets_reproduce_the_stack(tmp_path, kind, activation):
    stack = _trained_like_stack(kind, activation)
    written = export_transcoders(stack, tmp_path, input_hook="mlp.hook_in",
                                 output_hook="mlp.hook_out", model_name="tiny-llama")
    # circuit-tracer's cross-layer files cannot hold TopK: that one is native only
    formats = {"native"} if (kind, activation) == ("clt", "topk") else {"native", "circuit_tracer"}
    assert set(written) == formats
    x_raw = torch.randn(5, L, D) * 2
    acts, recon = _stack_reference(stack, x_raw)
    for fmt, path in written.items():
        tc = load_transcoders(str(path))
        assert tc.kind == ("clt" if kind == "clt" else "plt")
        assert tc.activation_name == {"batchtopk": "jumprelu"}.get(activation, activation)
        assert tc.k == (3 if activation == "topk" else None)
        assert tc.has_skip == (kind == "skip")
        assert (tc.input_hook, tc.output_hook) == ("mlp.hook_in", "mlp.hook_out")
        by_source = {s: tc.encode(s, x_raw[:, s]) for s in range(L)}
        for layer in range(L):
            torch.testing.assert_close(by_source[layer], acts[:, layer], rtol=1e-5, atol=1e-5,
                                       msg=f"{fmt} activations, layer {layer}")
            torch.testing.assert_close(tc.reconstruct(layer, by_source, x_raw[:, layer]),
                                       recon[:, layer], rtol=1e-5, atol=1e-5,
                                       msg=f"{fmt} reconstruction, layer {layer}")
    if "circuit_tracer" not in written:
        return
    config = yaml.safe_load((written["circuit_tracer"] / "config.yaml").read_text())
    if activation == "topk":
        assert (config["activation"], config["k"]) == ("topk", 3)
    assert config["model_kind"] == ("cross_layer_transcoder" if kind == "clt"
                                    else "transcoder_set")
    assert config["feature_input_hook"] == "mlp.hook_in"
    assert config["model_name"] == "tiny-llama"


def test_batchtopk_running_threshold_fires_about_k_features_on_training_like_data():
    """Before the per-feature fit, the JumpReLU threshold is the batch threshold: mean L0 ≈ k."""
    from circuit_atlas.training.activations import batch_threshold

    stack = _trained_like_stack("plt", "batchtopk")
    x = torch.randn(4000, L, D)
    with torch.no_grad():
        pre = stack.pre_activations(x)
        stack.threshold_estimate.copy_(batch_threshold(pre, 3))
        l0 = (stack.activate_inference(pre) > 0).sum(-1).float().mean(0)
    assert torch.allclose(l0, torch.full((L,), 3.0), atol=0.01)
