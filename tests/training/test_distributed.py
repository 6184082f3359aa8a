"""DDP over data: two gloo processes launched by torchrun give the result of one process that
sees the same global batches."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

HERE = Path(__file__).parent


def _single_process(out_dir):
    sys.path.insert(0, str(HERE))
    try:
        import ddp_worker
    finally:
        sys.path.remove(str(HERE))
    torch.set_num_threads(1)
    return ddp_worker.train(out_dir).stack.state_dict()


def test_two_gloo_processes_match_one_process(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(HERE / "ddp_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rank0, rank1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    single = _single_process(tmp_path / "single")
    assert rank0.keys() == single.keys()
    for key in single:
        assert torch.equal(rank0[key], rank1[key]), f"replicas diverged at {key}"
        torch.testing.assert_close(rank0[key], single[key], rtol=1e-5, atol=1e-6,
                                   msg=f"DDP differs from one process at {key}")
    # the weights moved (so agreement is not just agreement of the initialisation)
    assert (single["W_enc"] - ddp_init()["W_enc"]).abs().max() > 1e-3
    # the checkpoint holds one data-source state per rank
    names = {p.name for p in (tmp_path / "run" / "checkpoint").iterdir()}
    assert {"source_r0.json", "source_r1.json"} <= names


def ddp_init():
    sys.path.insert(0, str(HERE))
    try:
        import ddp_worker
    finally:
        sys.path.remove(str(HERE))
    from circuit_atlas.training.architecture import TranscoderStack
    arch, optim = ddp_worker.configs()
    return TranscoderStack(arch, seed=optim.seed).state_dict()
