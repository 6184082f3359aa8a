"""Training recovers planted sparse structure: the proof that optimiser, JumpReLU estimator and
losses *work*. Data: targets are sparse non-negative combinations of known unit directions
(circuit_atlas.training.synthetic), so a correct transcoder must find those directions."""

import pytest
import torch

from circuit_atlas.training.config import ArchitectureConfig, OptimConfig
from circuit_atlas.training.source import TensorActivationSource
from circuit_atlas.training.synthetic import planted_data, recovery_cosines
from circuit_atlas.training.trainer import Trainer

L, D, K, F = 3, 24, 32, 64


@pytest.mark.parametrize("kind,activation,k", [("plt", "jumprelu", None),
                                               ("clt", "jumprelu", None),
                                               ("clt", "batchtopk", 2)])
def test_training_recovers_planted_directions(kind, activation, k):
    torch.set_num_threads(1)
    data = planted_data(8192, L, D, K, cross_layer=kind == "clt", seed=1)
    arch = ArchitectureConfig(kind=kind, n_layers=L, d_model=D, n_features=F,
                              activation=activation, k=k)
    optim = OptimConfig(steps=400, batch_size=512, lr=5e-3, lr_warmup_steps=20,
                        sparsity_coefficient=3e-2, log_every=100, checkpoint_every=10**6,
                        dead_after_tokens=50_000)
    result = Trainer(arch, optim, TensorActivationSource(data.inputs, data.targets),
                     progress=False).run()
    cos = recovery_cosines(data.decoders, result.stack.decoder_blocks())
    assert (cos > 0.9).float().mean() >= 0.9, cos
    # FVU on the whole data set, computed here rather than taken from the trainer's log
    stack = result.stack
    with torch.no_grad():
        x = data.inputs / stack.input_scale[None, :, None]
        recon = stack.decode(stack.activate_inference(stack.pre_activations(x)), x)
        recon = recon * stack.target_scale[None, :, None]
    for layer in range(L):
        y = data.targets[:, layer]
        fvu = ((y - recon[:, layer]) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
        assert fvu < 0.1, (layer, fvu)
    # sparse: close to the planted number of active features per token (≈1.9)
    l0 = (stack.activate_inference(stack.pre_activations(x)) > 0).sum(-1).float().mean()
    assert l0 < 4.0


def test_skip_transcoder_learns_a_linear_map_in_w_skip():
    """A purely linear target y = A·x is the skip connection's job: at the sparse optimum the
    features are off and the exported W_skip (output × input, applied as x·W_skipᵀ) is A itself,
    in raw units (scales folded back)."""
    from circuit_atlas.training.export import to_transcoders

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    L_, d = 2, 8
    A = torch.randn(L_, d, d, generator=gen) / d ** 0.5
    x = torch.randn(4096, L_, d, generator=gen) * 3.0
    y = torch.einsum("nli,loi->nlo", x, A)
    arch = ArchitectureConfig(kind="skip", n_layers=L_, d_model=d, n_features=16)
    optim = OptimConfig(steps=300, batch_size=256, lr=3e-2, lr_warmup_steps=10,
                        sparsity_coefficient=1e-2, log_every=100, checkpoint_every=10**6)
    stack = Trainer(arch, optim, TensorActivationSource(x, y), progress=False).run().stack
    tc = to_transcoders(stack, input_hook="mlp.hook_in", output_hook="mlp.hook_out")
    for layer in range(L_):
        w = tc.skip_weight(layer)
        assert (w - A[layer]).norm() / A[layer].norm() < 0.02


def test_bf16_autocast_trains_like_float32():
    """The mixed-precision path (bf16 autocast, used by default on GPUs) runs on CPU too; it must
    reach nearly the same loss as float32 from the same seed and data."""
    torch.set_num_threads(1)
    data = planted_data(4096, 2, 16, 16, cross_layer=True, seed=2)
    losses = {}
    for mode in ("none", "bf16"):
        arch = ArchitectureConfig(kind="clt", n_layers=2, d_model=16, n_features=32)
        optim = OptimConfig(steps=80, batch_size=256, lr=5e-3, lr_warmup_steps=10,
                            sparsity_coefficient=3e-2, log_every=80, checkpoint_every=10**6,
                            mixed_precision=mode)
        result = Trainer(arch, optim, TensorActivationSource(data.inputs, data.targets),
                         progress=False).run()
        losses[mode] = result.metrics["loss"]["reconstruction"]
        assert all(torch.isfinite(p).all() for p in result.stack.parameters())
    assert abs(losses["bf16"] - losses["none"]) / losses["none"] < 0.1, losses
