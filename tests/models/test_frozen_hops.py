"""Low-rank hops of a feature row's backward pass equal autograd through the frozen pass.

`FrozenHops.entry` claims to give what `torch.autograd.grad` of a frozen pass gives at the residual
stream entering a layer, from cotangents at single positions of that layer's input hook, and
`FrozenHops.through` what it gives one layer further down. The reference here is exactly that
autograd call on `ReplacementModel.frozen_forward`, for every supported norm layout and input hook,
grouped-query attention, Gemma-2's soft-caps and sliding windows, Gemma-3's q/k norms, both kinds
of clean record (attention states and whole patterns) and prefix passes.
"""

from __future__ import annotations

import pytest
import torch

import circuit_atlas
from circuit_atlas.models.frozen_hops import FrozenHops
from circuit_atlas.models.tiny import tiny_language_model
from circuit_atlas.transcoders.random import random_transcoders

from ..conftest import prompt_ids

LAYOUTS = [
    ("llama", "hook_resid_mid"),
    ("llama", "mlp.hook_in"),
    ("qwen3", "ln2.hook_normalized"),
    ("mistral", "hook_resid_mid"),
    ("gemma2", "ln2.hook_normalized"),
    ("gemma2", "mlp.hook_in"),
    ("gemma3", "hook_resid_mid"),
]


def _model(family: str, input_hook: str, n_layers: int = 3, d_model: int = 32, max_positions: int = 64,
           skip: bool = False, output_hook: str = "hook_mlp_out"):
    lm = tiny_language_model(family, seed=3, n_layers=n_layers, d_model=d_model, max_positions=max_positions)
    tc = random_transcoders("plt", n_layers=n_layers, d_model=d_model, n_features=16, seed=5, skip=skip,
                            input_hook=input_hook, output_hook=output_hook)
    return circuit_atlas.load(lm, tc)


def _close(actual, reference, what):
    scale = float(reference.abs().amax())
    assert torch.allclose(actual, reference, rtol=1e-5, atol=1e-5 * scale), (
        f"{what}: max difference {float((actual - reference).abs().max()):.3g} of {scale:.3g}")


def _autograd_entry(model, run, layer, positions, vectors, length):
    """Reference: one frozen pass per target, gradient at the residual entering `layer`."""
    frozen = model.frozen_forward(run.tokens, batch_size=positions.numel(), run=run, length=length)
    cotangent = torch.zeros_like(frozen.inputs[layer])
    cotangent[torch.arange(positions.numel()), positions] = vectors.to(cotangent.dtype)
    (grad,) = torch.autograd.grad(frozen.inputs[layer], frozen.residuals[layer], cotangent)
    return grad


def _targets(model, length, count, seed):
    generator = torch.Generator().manual_seed(seed)
    positions = torch.randint(1, length, (count,), generator=generator)
    positions[0] = length - 1
    vectors = torch.randn(count, model.d_model, generator=generator)
    return positions, vectors


@pytest.mark.parametrize("family,input_hook", LAYOUTS)
@pytest.mark.parametrize("compact", [True, False], ids=["states", "patterns"])
def test_hops_equal_autograd_through_the_frozen_pass(family, input_hook, compact):
    model = _model(family, input_hook)
    tokens = prompt_ids(model, length=23, seed=1)
    run = model.run(tokens, compact=compact)
    hops = model.frozen_hops(run)
    for layer in range(model.n_layers):
        for length in (23, 15):
            positions, vectors = _targets(model, length, count=5, seed=layer + length)
            entered = hops.entry(layer, positions, vectors, length)
            assert entered.rank == 1 + hops.layer(layer).n_heads
            reference = _autograd_entry(model, run, layer, positions, vectors, length)
            _close(entered.dense(torch.float32), reference, f"{family} {input_hook} entry {layer} length {length}")
            if layer == 0:
                continue
            moved = hops.through(layer - 1, entered)
            assert moved.rank == entered.rank * (1 + hops.layer(layer - 1).n_heads)
            frozen = model.frozen_forward(run.tokens, batch_size=5, run=run, length=length)
            (below,) = torch.autograd.grad(frozen.residuals[layer], frozen.residuals[layer - 1], reference)
            what = f"{family} {input_hook} through {layer - 1} length {length}"
            _close(moved.dense(torch.float32), below, what)
            _close(hops.through_dense(layer - 1, reference), below, what + " (dense)")


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_logit_rows_start_below_the_final_norm(family):
    model = _model(family, "hook_resid_mid")
    run = model.run(prompt_ids(model, length=17, seed=3), compact=True)
    positions, vectors = torch.tensor([16, 16, 12]), torch.randn(3, model.d_model, generator=torch.Generator().manual_seed(1))
    start = model.frozen_hops(run).final(positions, vectors, 17)
    frozen = model.frozen_forward(run.tokens, batch_size=3, run=run)
    cotangent = torch.zeros_like(frozen.final_hidden)
    cotangent[torch.arange(3), positions] = vectors
    (reference,) = torch.autograd.grad(frozen.final_hidden, frozen.residuals[-1], cotangent)
    assert start.rank == 1
    _close(start.dense(torch.float32), reference, f"{family} final norm")


@pytest.mark.parametrize("family", ["llama", "gemma2"])
@pytest.mark.parametrize("output_hook", ["hook_mlp_out", "mlp.hook_out"])
def test_output_hook_gradient_equals_autograd(family, output_hook):
    """Gemma's `mlp.hook_out` sits before the post-MLP norm: its gradient goes through that norm."""
    model = _model(family, "hook_resid_mid", output_hook=output_hook)
    run = model.run(prompt_ids(model, length=13, seed=2), compact=True)
    hops = model.frozen_hops(run)
    assert hops.complete
    frozen = model.frozen_forward(run.tokens, batch_size=2, run=run, length=13)
    gradient = torch.randn(2, 13, model.d_model, generator=torch.Generator().manual_seed(0))
    for layer in range(model.n_layers):
        (reference,) = torch.autograd.grad(frozen.residuals[layer + 1], frozen.outputs[layer], gradient,
                                           retain_graph=True)
        _close(hops.output_gradient(layer, gradient), reference, f"{family} {output_hook} layer {layer}")


def test_sliding_window_and_soft_cap_rows_beyond_the_window():
    """Gemma-2 with a window shorter than the prompt: keys outside it get no gradient."""
    lm = tiny_language_model("gemma2", seed=3, n_layers=2, d_model=32, max_positions=128)
    lm.hf_model.config.sliding_window = 8
    tc = random_transcoders("plt", n_layers=2, d_model=32, n_features=16, seed=5,
                            input_hook="hook_resid_mid", output_hook="hook_mlp_out")
    model = circuit_atlas.load(lm, tc)
    run = model.run(prompt_ids(model, length=40, seed=2), compact=True)
    positions = torch.tensor([39, 20, 9])
    vectors = torch.randn(3, model.d_model, generator=torch.Generator().manual_seed(0))
    hops = model.frozen_hops(run)
    entered = hops.entry(1, positions, vectors, 40)
    reference = _autograd_entry(model, run, 1, positions, vectors, 40)
    _close(entered.dense(torch.float32), reference, "entry")
    frozen = model.frozen_forward(run.tokens, batch_size=3, run=run, length=40)
    (below,) = torch.autograd.grad(frozen.residuals[1], frozen.residuals[0], reference)
    _close(hops.through(0, entered).dense(torch.float32), below, "through")


def test_families_without_a_value_projection_keep_the_autograd_path():
    model = _model("gpt2", "hook_resid_mid")
    assert model.frozen_hops(model.run(prompt_ids(model, length=9, seed=1), compact=True)) is None


def test_layers_with_a_skip_path_are_not_crossed_in_low_rank_form():
    """Below the target's layer a gradient also flows through the MLP's skip path, which the
    low-rank hop does not model: it must decline (the entry, above that MLP, is still exact)."""
    model = _model("llama", "hook_resid_mid", skip=True)
    run = model.run(prompt_ids(model, length=11, seed=1), compact=True)
    hops = model.frozen_hops(run)
    positions, vectors = _targets(model, 11, count=3, seed=0)
    entered = hops.entry(2, positions, vectors, 11)
    _close(entered.dense(torch.float32), _autograd_entry(model, run, 2, positions, vectors, 11), "entry")
    assert hops.through(1, entered) is None and hops.through_cost(1, 3, entered.rank, 11) is None
    assert not hops.complete


def test_attribution_takes_low_rank_hops_for_feature_rows(monkeypatch):
    """The compact engine uses them, and no frozen pass (a silent fallback to autograd would only
    cost time, so nothing else would notice)."""
    calls = {"entry": 0, "through": 0, "final": 0}
    entry, through, final = FrozenHops.entry, FrozenHops.through, FrozenHops.final

    def counting_final(self, *args):
        calls["final"] += 1
        return final(self, *args)

    def counting_entry(self, *args):
        calls["entry"] += 1
        return entry(self, *args)

    def counting_through(self, *args):
        calls["through"] += 1
        return through(self, *args)

    monkeypatch.setattr(FrozenHops, "entry", counting_entry)
    monkeypatch.setattr(FrozenHops, "through", counting_through)
    monkeypatch.setattr(FrozenHops, "final", counting_final)
    frozen_passes = []
    frozen_forward = circuit_atlas.ReplacementModel.frozen_forward
    monkeypatch.setattr(circuit_atlas.ReplacementModel, "frozen_forward",
                        lambda self, *a, **k: frozen_passes.append(1) or frozen_forward(self, *a, **k))
    model = _model("llama", "hook_resid_mid", d_model=64)
    graph = circuit_atlas.attribute(model, prompt_ids(model, length=40, seed=4), max_feature_nodes=40,
                                    batch_size=8, progress=False)
    layers = graph.active_features[graph.selected_features, 0]
    assert calls["entry"] > 0 and calls["through"] > 0 and calls["final"] > 0
    assert not frozen_passes  # every hop in closed form: no autograd pass was built
    assert bool((layers > 0).any())


@pytest.mark.parametrize("kind", ["rms", "rms_one_plus", "layernorm"])
@pytest.mark.parametrize("normalized", [False, True])
def test_frozen_norm_transpose_equals_autograd(kind, normalized):
    """The closed-form transpose of every norm computation, against autograd through `apply_norm`."""
    from circuit_atlas.models.frozen_hops import _Norm
    from circuit_atlas.models.norms import apply_norm

    generator = torch.Generator().manual_seed(0)
    module = torch.nn.LayerNorm(8) if kind == "layernorm" else torch.nn.Module()
    if kind != "layernorm":
        module.weight = torch.nn.Parameter(torch.randn(8, generator=generator))
    else:
        module.weight.data = torch.randn(8, generator=generator)
    scale = torch.rand(5, 1, generator=generator) + 0.5
    cotangent = torch.randn(5, 8, generator=generator)
    x = torch.randn(5, 8, generator=generator, requires_grad=True)
    result = apply_norm(kind, module, x, scale)
    (reference,) = torch.autograd.grad(result.normalized if normalized else result.output, x, cotangent)
    actual = _Norm(module, kind, scale.flatten()).vjp(cotangent, scale, torch.float32, normalized=normalized)
    _close(actual, reference, f"{kind} normalized={normalized}")
