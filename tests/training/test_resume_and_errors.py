"""Exact resume from checkpoints, the NaN stop, and user mistakes."""

import json

import pytest
import torch

from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.training.config import ArchitectureConfig, OptimConfig
from circuit_atlas.training.errors import (TrainingConfigError, TrainingDataError,
                                           TrainingDivergedError)
from circuit_atlas.training.source import TensorActivationSource
from circuit_atlas.training.synthetic import planted_data
from circuit_atlas.training.trainer import Trainer


def _data(n=2048, L=2, d=8):
    return planted_data(n, L, d, 12, cross_layer=True, seed=3)


def _configs(activation="jumprelu", **optim):
    arch = ArchitectureConfig(kind="clt", n_layers=2, d_model=8, n_features=16,
                              activation=activation, k=2 if "topk" in activation else None)
    base = dict(steps=20, batch_size=64, lr=3e-3, lr_warmup_steps=3, sparsity_warmup_steps=5,
                log_every=4, checkpoint_every=5, dead_after_tokens=256)
    base.update(optim)
    return arch, OptimConfig(**base)


def _trainer(tmp, activation="jumprelu", data=None, **optim):
    data = data or _data()
    arch, cfg = _configs(activation, **optim)
    return Trainer(arch, cfg, TensorActivationSource(data.inputs, data.targets, seed=5),
                   out_dir=tmp, progress=False)


@pytest.mark.parametrize("activation", ["jumprelu", "topk"])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, activation):
    torch.set_num_threads(1)
    straight = _trainer(tmp_path / "a", activation).run()
    first = _trainer(tmp_path / "b", activation).run(stop_after=12)  # checkpoint at 10, 12
    assert first.step == 12
    resumed_trainer = _trainer(tmp_path / "b", activation)  # fresh objects, fresh source
    resumed = resumed_trainer.run()
    assert resumed.step == 20
    a, b = straight.stack.state_dict(), resumed.stack.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert torch.equal(straight.stack.threshold_estimate, resumed.stack.threshold_estimate)
    # the optimiser moments match too, so the runs would keep agreeing
    sa = _adam_state(tmp_path / "a")
    sb = _adam_state(tmp_path / "b")
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    # the log holds each metrics step exactly once
    records = [json.loads(line) for line in
               (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "fvu" in r] == [4, 8, 12, 16, 20]
    assert [r["step"] for r in records if "export" in r] == [20]  # the final export check


def _adam_state(out_dir):
    from safetensors.torch import load_file
    return load_file(str(out_dir / "checkpoint" / "optimizer.safetensors"))


def test_checkpoint_has_no_pickle(tmp_path):
    _trainer(tmp_path, steps=5).run()
    files = sorted(p.name for p in (tmp_path / "checkpoint").iterdir())
    assert files == ["model.safetensors", "optimizer.safetensors", "source_r0.json",
                     "source_r0.safetensors", "state.json", "trainer.safetensors"]


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    data = _data()
    # the source's shuffled order is fixed by its seed; poison one row it serves at step 8
    probe = TensorActivationSource(data.inputs, data.targets, seed=5)
    for _ in range(4 + 7):  # 4 normalisation batches, then steps 1..7
        probe.next_batch(64)
    poisoned_row = probe.index.take(64)[10]
    data.inputs[poisoned_row, 1, 3] = float("nan")
    trainer = _trainer(tmp_path, data=data)
    with pytest.raises(TrainingDivergedError) as info:
        trainer.run()
    message = str(info.value)
    assert "step 8" in message and "nan" in message.lower() and "step 5" in message
    assert str(tmp_path / "checkpoint") in message
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["step"] == 5
    assert not (tmp_path / "checkpoint.tmp").exists()
    # the kept checkpoint is good: its weights are finite and a clean source resumes from it
    clean = _trainer(tmp_path)
    clean.load(tmp_path / "checkpoint")
    assert all(torch.isfinite(p).all() for p in clean.stack.parameters())


@pytest.mark.parametrize("change,match", [
    (dict(n_features=0), "--features"),
    (dict(n_features=-3), "--features"),
    (dict(kind="mlp"), "--kind"),
    (dict(activation="gelu"), "--activation"),
    (dict(activation="topk", k=None), "--k"),
    (dict(activation="topk", k=99), "--k"),
])
def test_bad_architecture_arguments(change, match):
    args = dict(kind="plt", n_layers=2, d_model=8, n_features=16)
    args.update(change)
    with pytest.raises(TrainingConfigError, match=match):
        ArchitectureConfig(**args).validate()


def test_bad_optim_arguments_are_named():
    with pytest.raises(TrainingConfigError, match="--lr"):
        OptimConfig(lr=float("nan")).validate()
    with pytest.raises(TrainingConfigError, match="--batch-size"):
        OptimConfig(batch_size=0).validate()


def test_too_small_data_for_one_batch():
    data = _data(n=50)
    arch, cfg = _configs()
    trainer = Trainer(arch, cfg, TensorActivationSource(data.inputs, data.targets),
                      progress=False)
    with pytest.raises(TrainingDataError, match="only 50 tokens.*64"):
        trainer.run()
    assert issubclass(TrainingDataError, CircuitAtlasError)


def test_resume_refuses_a_different_experiment(tmp_path):
    _trainer(tmp_path, steps=5).run()
    with pytest.raises(TrainingConfigError, match="lr"):
        _trainer(tmp_path, steps=10, lr=1e-2).run()


def test_resume_with_another_data_source_is_refused(tmp_path):
    from circuit_atlas.training.cache import CachedActivationSource, build_activation_cache

    data = _data()
    _trainer(tmp_path / "run", steps=5).run()
    build_activation_cache(TensorActivationSource(data.inputs, data.targets), tmp_path / "cache",
                           n_tokens=512, progress=False)
    arch, cfg = _configs(steps=10)
    trainer = Trainer(arch, cfg, CachedActivationSource(tmp_path / "cache", seed=5),
                      out_dir=tmp_path / "run", progress=False)
    with pytest.raises(TrainingDataError, match="saved data position does not fit"):
        trainer.run()


def test_resume_with_another_model_or_corpus_is_refused(tmp_path):
    data = _data()
    arch, cfg = _configs(steps=5)

    def trainer(corpus):
        return Trainer(arch, cfg, TensorActivationSource(data.inputs, data.targets, seed=5),
                       out_dir=tmp_path, progress=False, metadata={"corpus": corpus})

    trainer("a.jsonl").run()
    with pytest.raises(TrainingConfigError, match="corpus 'a.jsonl', now 'b.jsonl'"):
        trainer("b.jsonl").run()


def test_resume_after_a_kill_mid_log_line_drops_the_torn_line(tmp_path):
    """A run killed while appending to metrics.jsonl leaves half a line; resuming must not
    choke on it, and the records after the checkpoint go."""
    _trainer(tmp_path, steps=10).run()  # checkpoints at 5 and 10
    log = tmp_path / "metrics.jsonl"
    with log.open("a", encoding="utf-8") as handle:
        handle.write('{"step": 12, "loss": {"reconst')  # the kill
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["step"] == 10
    _trainer(tmp_path, steps=20).run()
    records = [json.loads(line) for line in log.read_text().splitlines()]  # all parse
    steps = [r["step"] for r in records if "fvu" in r]
    assert steps == [4, 8, 10, 12, 16, 20]  # 10: the first run's last step
    assert not list(tmp_path.glob(".metrics.jsonl.*.tmp"))


def test_log_rewrite_is_atomic(tmp_path, monkeypatch):
    from circuit_atlas.training.metrics import JsonlLog

    log = JsonlLog(tmp_path / "metrics.jsonl")
    for step in (1, 2, 3):
        log.write({"step": step})
    before = log.path.read_text()

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr("circuit_atlas.io.atomic.os.replace", crash)
    with pytest.raises(OSError, match="disk full"):
        log.truncate_after(1)
    assert log.path.read_text() == before  # old file intact, no temp file left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_resume_accepts_the_same_model_or_corpus_named_another_way(tmp_path, monkeypatch):
    """`demo` and the bundled folder (how checkpoints recorded it before models were kept as
    given), relative and absolute paths, symlinks: the same run; another file is not."""
    from circuit_atlas.io.presets import BUNDLED_ASSETS

    data = _data()
    arch, cfg = _configs(steps=5)
    (tmp_path / "lines.jsonl").write_text("x\n")
    (tmp_path / "other.jsonl").write_text("y\n")
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "lines.jsonl")
    monkeypatch.chdir(tmp_path)

    def run(model, corpus, steps=5):
        arch, cfg = _configs(steps=steps)
        Trainer(arch, cfg, TensorActivationSource(data.inputs, data.targets, seed=5),
                out_dir=tmp_path / "run", progress=False,
                metadata={"model": model, "corpus": corpus}).run()

    run(str(BUNDLED_ASSETS / "model"), str(tmp_path / "lines.jsonl"))
    run("demo", "lines.jsonl", steps=8)
    run("demo", "link.jsonl", steps=10)
    with pytest.raises(TrainingConfigError, match="corpus 'link.jsonl', now 'other.jsonl'"):
        run("demo", "other.jsonl", steps=12)
    with pytest.raises(TrainingConfigError, match="model 'demo', now 'some/hub-model'"):
        run("some/hub-model", "lines.jsonl", steps=12)


@pytest.mark.parametrize("setting", [None, True])
def test_checkpoints_record_the_resolved_decoder_normalisation(tmp_path, setting):
    """A later change of the default must not change how a saved run continues."""
    import dataclasses

    data = _data()
    arch, cfg = _configs("topk", steps=5)
    arch = dataclasses.replace(arch, normalize_decoder=setting)
    Trainer(arch, cfg, TensorActivationSource(data.inputs, data.targets, seed=5),
            out_dir=tmp_path, progress=False).run()
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["architecture"]["normalize_decoder"] is bool(setting)
