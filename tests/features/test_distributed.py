"""`features build` under torchrun with two gloo ranks on the CPU: the merged store equals, row
for row, the store one process builds; a rank killed mid-build is resumed by rerunning."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from circuit_atlas.cli.main import main
from circuit_atlas.features import FeatureStore
from circuit_atlas.features.builder import KILL_ENV, KILL_RANK_ENV


def _args(inputs, out, *extra):
    return ["features", "build", "--model", str(inputs.model), "--transcoders", str(inputs.transcoders),
            "--corpus", str(inputs.corpus), "--out", str(out), "--context-len", "10",
            "--batch-size", "3", "--top-k", "5", "--samples", "8", "--commit-interval", "0",
            "--block-documents", "4", "--device", "cpu", "--no-progress", *extra]


def _torchrun(args, **env):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "circuit_atlas.cli.main", *args]
    return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", **env},
                          capture_output=True, text=True, timeout=300)


def test_two_ranks_build_the_store_one_process_builds(saved_inputs, tmp_path, dump):
    assert main(_args(saved_inputs, tmp_path / "one")) == 0
    run = _torchrun(_args(saved_inputs, tmp_path / "two"))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert dump(tmp_path / "two") == dump(tmp_path / "one")
    assert not (tmp_path / "two" / "shards").exists()
    assert run.stdout.count("feature store:") == 1  # rank 0 reports, once
    with FeatureStore(tmp_path / "two") as store:
        assert store.complete and store.meta["progress"]["windows"] > 20


def test_a_killed_rank_resumes_to_the_one_process_store(saved_inputs, tmp_path, dump, capsys):
    """Rank 1 kills itself inside its fourth commit (torchrun then stops rank 0); the ranks hold
    different amounts of work. Rerunning continues both and ends equal to one process, also with
    a token budget that ends inside a block."""
    budget = ["--max-tokens", "400"]
    assert main(_args(saved_inputs, tmp_path / "one", *budget)) == 0
    killed = _torchrun(_args(saved_inputs, tmp_path / "two", *budget),
                       **{KILL_ENV: "4", KILL_RANK_ENV: "1"})
    assert killed.returncode != 0 and str(int(signal.SIGKILL)) in killed.stdout + killed.stderr
    with FeatureStore(tmp_path / "two") as partial:
        assert not partial.complete
    shards = sorted((tmp_path / "two" / "shards").glob("rank-*"))
    assert len(shards) == 2
    done = []
    for shard in shards:
        with FeatureStore(shard) as store:
            done.append(store.meta["progress"]["tokens"])
    assert done[1] > 0 and sum(done) < 400

    # one process cannot take over a two-rank build
    capsys.readouterr()
    assert main(_args(saved_inputs, tmp_path / "two", *budget)) == 1
    assert "being built by 2 ranks" in capsys.readouterr().err

    resumed = _torchrun(_args(saved_inputs, tmp_path / "two", *budget))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"this run: {400 - sum(done)} tokens" in resumed.stdout
    assert dump(tmp_path / "two") == dump(tmp_path / "one")

