"""Interrupted builds resume and end equal to uninterrupted ones; the store survives a kill."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys

import pytest

from circuit_atlas.cli.main import main
from circuit_atlas.features import BuildSettings, FeatureStore, build_feature_store
from circuit_atlas.features import builder as builder_module
from circuit_atlas.features.build import KILL_ENV


def _args(inputs, out, *extra):
    return ["features", "build", "--model", str(inputs.model), "--transcoders", str(inputs.transcoders),
            "--corpus", str(inputs.corpus), "--out", str(out), "--context-len", "10",
            "--batch-size", "3", "--top-k", "5", "--samples", "8", "--commit-interval", "0",
            "--device", "cpu", "--no-progress", *extra]


def test_killed_build_resumes_to_the_same_store(saved_inputs, tmp_path, dump):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(_args(saved_inputs, straight)) == 0

    env = {**os.environ, KILL_ENV: "3", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-m", "circuit_atlas.cli.main", *_args(saved_inputs, resumed)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    # killed inside its third commit: the first two commits are intact, the third rolled back
    conn = sqlite3.connect(resumed / "features.sqlite")
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
    partial = FeatureStore(resumed)
    progress = partial.meta["progress"]
    assert not partial.complete and progress["windows"] == 2 * 3  # two committed batches of 3
    assert partial.card(0, 0).n_tokens == progress["tokens"] > 0
    partial.close()

    assert main(_args(saved_inputs, resumed)) == 0
    assert dump(resumed) == dump(straight)
    assert FeatureStore(resumed).complete


def test_ctrl_c_commits_and_a_rerun_with_a_larger_budget_equals_a_fresh_build(
        saved_inputs, tmp_path, dump, monkeypatch):
    """First SIGINT: stop after the batch and commit. An unfinished store may continue under a
    new --max-tokens, and then equals a fresh build with that budget."""
    model = saved_inputs.loaded
    settings = BuildSettings(context_len=10, top_k=5, n_samples=8, max_tokens=120)
    original = builder_module.StoreBuilder._process
    calls = []

    def process_then_interrupt(self, batch):
        original(self, batch)
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(builder_module.StoreBuilder, "_process", process_then_interrupt)
    report = build_feature_store(model, saved_inputs.corpus, tmp_path / "a", settings,
                                 batch_size=2, commit_interval=3600, progress=False)
    assert report.stop_reason == "interrupted" and not report.complete
    assert FeatureStore(tmp_path / "a").meta["progress"]["windows"] == 4
    monkeypatch.setattr(builder_module.StoreBuilder, "_process", original)

    bigger = BuildSettings(context_len=10, top_k=5, n_samples=8, max_tokens=200)
    report = build_feature_store(model, saved_inputs.corpus, tmp_path / "a", bigger, batch_size=2,
                                 progress=False)
    assert report.resumed and report.complete and report.tokens == 200
    fresh = build_feature_store(model, saved_inputs.corpus, tmp_path / "b", bigger, batch_size=2,
                                progress=False)
    assert fresh.tokens == 200 and fresh.stop_reason == "max-tokens"
    assert dump(tmp_path / "a") == dump(tmp_path / "b")

    # a finished store keeps its budget; rerunning the same command is a no-op
    again = build_feature_store(model, saved_inputs.corpus, tmp_path / "b", bigger, progress=False)
    assert again.resumed and again.new_tokens == 0 and again.complete
    from circuit_atlas.features import FeatureStoreError

    with pytest.raises(FeatureStoreError, match="complete"):
        build_feature_store(model, saved_inputs.corpus, tmp_path / "b", settings, progress=False)
