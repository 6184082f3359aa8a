"""Worker for test_distributed.py, run under torchrun: trains on a rank's slice of each global
batch and saves the final weights of this rank. Not a test module (no test_ prefix)."""

import sys

import torch
from safetensors.torch import save_file

from circuit_atlas.io import distributed as dist
from circuit_atlas.training.config import ArchitectureConfig, OptimConfig
from circuit_atlas.training.source import TensorActivationSource
from circuit_atlas.training.synthetic import planted_data
from circuit_atlas.training.trainer import Trainer


def configs():
    arch = ArchitectureConfig(kind="clt", n_layers=2, d_model=8, n_features=16)
    optim = OptimConfig(steps=15, batch_size=64, lr=3e-3, lr_warmup_steps=3, log_every=5,
                        checkpoint_every=5, dead_after_tokens=256, seed=2)
    return arch, optim


def data():
    return planted_data(1024, 2, 8, 12, cross_layer=True, seed=4)


def train(out_dir, rank=0, world_size=1):
    arch, optim = configs()
    d = data()
    source = TensorActivationSource(d.inputs, d.targets, seed=7, rank=rank, world_size=world_size)
    return Trainer(arch, optim, source, out_dir=out_dir, device="cpu", progress=False).run()


if __name__ == "__main__":
    torch.set_num_threads(1)
    out = sys.argv[1]
    assert dist.init_from_environment()
    result = train(f"{out}/run", dist.rank(), dist.world_size())
    save_file({k: v.contiguous() for k, v in result.stack.state_dict().items()},
              f"{out}/rank{dist.rank()}.safetensors")
    dist.shutdown()
