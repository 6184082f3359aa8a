"""The exported set computes what was trained: TopK exactly, BatchTopK within 1 % FVU through
fitted per-feature thresholds (each checked against an independent brute-force search)."""

import pytest
import torch

from circuit_atlas.training import ArchitectureConfig, OptimConfig, TensorActivationSource, Trainer
from circuit_atlas.training.activations import batch_topk
from circuit_atlas.training.export import to_transcoders
from circuit_atlas.training.fidelity import TOLERANCE, export_fidelity
from circuit_atlas.training.synthetic import planted_data
from circuit_atlas.training.thresholds import fit_feature_thresholds


def _brute_force_cost(h, kept, theta):
    on = h > theta
    return float((h.pow(2) * (kept & ~on)).sum() + (h.pow(2) * (~kept & on)).sum())


def test_fitted_thresholds_are_optimal_per_feature():
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(150, 2, 9, generator=gen) * (torch.rand(9, generator=gen) * 2)
               for _ in range(3)]
    theta = fit_feature_thresholds(batches, 3, torch.tensor([0.7, 0.8]))
    for layer in range(2):
        h = torch.cat([b[:, layer] for b in batches]).double()
        kept = torch.cat([batch_topk(b, 3)[:, layer] != 0 for b in batches])
        for f in range(9):
            best = min(_brute_force_cost(h[:, f], kept[:, f], t)
                       for t in [0.0, *h[:, f].tolist()] if t >= 0)
            assert _brute_force_cost(h[:, f], kept[:, f], theta[layer, f].item()) <= best + 1e-9


def _train(activation, kind="plt", steps=150, seed=0):
    """Train on the first 6000 tokens of a planted data set; the last 4096 are held out."""
    data = planted_data(10096, 2, 12, 20, cross_layer=kind == "clt", seed=seed)
    arch = ArchitectureConfig(kind=kind, n_layers=2, d_model=12, n_features=32,
                              activation=activation, k=3)
    optim = OptimConfig(steps=steps, batch_size=256, lr=5e-3, log_every=50,
                        mixed_precision="none", threshold_fit_batches=8)
    source = TensorActivationSource(data.inputs[:6000], data.targets[:6000], seed=1)
    result = Trainer(arch, optim, source, device="cpu", progress=False).run()
    return result, data


@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_batchtopk_export_is_within_one_percent_of_training(kind):
    result, data = _train("batchtopk", kind)
    stack = result.stack
    assert bool(stack.feature_threshold_fitted)
    # the run's own check, on batches it did not train on
    assert result.fidelity is not None and result.fidelity.relative_gap <= TOLERANCE
    # and an independent one on fresh data with the exported set's raw-unit weights
    held_x, held_y = data.inputs[6000:], data.targets[6000:]
    batches = [(held_x[i:i + 256], held_y[i:i + 256]) for i in range(0, 4096, 256)]
    tc = to_transcoders(stack, input_hook="a", output_hook="b")
    fidelity = export_fidelity(stack, batches, tc)
    assert fidelity.relative_gap <= TOLERANCE, fidelity.summary()
    assert abs(sum(fidelity.exported_l0) - sum(fidelity.trained_l0)) < 0.1 * sum(
        fidelity.trained_l0)


def test_topk_export_is_the_trained_function():
    result, data = _train("topk", steps=60)
    tc = to_transcoders(result.stack, input_hook="a", output_hook="b")
    assert (tc.activation_name, tc.k) == ("topk", 3)
    x = data.inputs[:500]
    with torch.no_grad():
        out = result.stack(x / result.stack.input_scale[None, :, None])
    for layer in range(2):
        torch.testing.assert_close(tc.encode(layer, x[:, layer]), out.acts[:, layer],
                                   rtol=1e-5, atol=1e-5)
    assert abs(result.fidelity.relative_gap) < 1e-4
