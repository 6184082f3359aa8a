"""`circuit-atlas train` and `eval-transcoders` end to end on a saved tiny model, and the
messages users get for bad inputs."""

import json

import pytest
import torch

from circuit_atlas.cli.main import main


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_lm):
    from circuit_atlas.models.tiny import WORDS
    import random

    root = tmp_path_factory.mktemp("train_cli")
    tiny_lm.save(root / "model")
    rng = random.Random(0)
    with (root / "corpus.jsonl").open("w") as handle:
        for _ in range(300):
            words = [rng.choice(WORDS[:60]) for _ in range(rng.randint(5, 30))]
            handle.write(json.dumps({"text": " ".join(words)}) + "\n")
    (root / "tiny.jsonl").write_text(json.dumps({"text": "the cat saw the dog"}) + "\n")
    return root


def _train_args(ws, out, *extra):
    return ["train", "--model", str(ws / "model"), "--corpus", str(ws / "corpus.jsonl"),
            "--kind", "clt", "--features", "24", "--steps", "30", "--batch-size", "128",
            "--lr", "3e-3", "--lr-warmup-steps", "5", "--context-length", "16",
            "--buffer-tokens", "512", "--log-every", "10", "--checkpoint-every", "10",
            "--eval-every", "15", "--out", str(out), "--quiet", *extra]


def test_train_then_eval_transcoders(workspace, capsys):
    out = workspace / "run"
    assert main(_train_args(workspace, out, "--input-hook", "mlp.hook_in",
                            "--output-hook", "mlp.hook_out")) == 0
    printed = capsys.readouterr().out
    assert "loss recovered" in printed and "wrote native transcoders" in printed
    from circuit_atlas.training.metrics import JsonlLog

    records = JsonlLog(out / "metrics.jsonl").read()
    assert [r["step"] for r in records if "fvu" in r] == [10, 20, 30]
    assert [r["step"] for r in records if "eval" in r] == [15, 30]
    first, last = records[0], [r for r in records if "fvu" in r][-1]
    assert len(last["fvu"]) == len(last["l0"]) == len(last["dead_fraction"]) == 2
    assert last["loss"]["reconstruction"] < first["loss"]["reconstruction"]  # it learned
    saved_eval = json.loads((out / "eval.json").read_text())
    assert set(saved_eval) >= {"layers", "ce_original", "ce_replacement", "loss_recovered"}

    tables = []
    for fmt in ("transcoders", "circuit_tracer"):
        code = main(["eval-transcoders", "--model", str(workspace / "model"), "--transcoders",
                     str(out / fmt), "--corpus", str(workspace / "corpus.jsonl"),
                     "--context-length", "16", "--windows", "8", "--quiet",
                     "--json", str(workspace / f"{fmt}.json")])
        assert code == 0
        tables.append(capsys.readouterr().out)
    assert tables[0] == tables[1]  # both formats describe the same transcoders
    # ... and reading the encoders lazily changes nothing in the metrics
    assert main(["eval-transcoders", "--model", str(workspace / "model"), "--transcoders",
                 str(out / fmt), "--corpus", str(workspace / "corpus.jsonl"), "--context-length",
                 "16", "--windows", "8", "--quiet", "--lazy-encoder"]) == 0
    assert capsys.readouterr().out == tables[-1]
    assert "layer" in tables[0] and "loss recovered" in tables[0]
    # packed: 8 full windows; one document per window: as many documents as fill 8 windows'
    # worth of tokens (the last one may overrun), padding not counted
    counts = {}
    for layout in ("packed", "documents"):
        assert main(["eval-transcoders", "--model", str(workspace / "model"), "--transcoders",
                     str(out / "transcoders"), "--corpus", str(workspace / "corpus.jsonl"),
                     "--context-length", "16", "--windows", "8", "--quiet", "--layout", layout,
                     "--json", str(workspace / f"{layout}.json")]) == 0
        counts[layout] = json.loads((workspace / f"{layout}.json").read_text())["n_tokens"]
    capsys.readouterr()
    assert counts["packed"] == 8 * 16 <= counts["documents"] < 8 * 16 + 16

    # re-running the finished command resumes at step 30 and trains no further
    assert main(_train_args(workspace, out, "--input-hook", "mlp.hook_in",
                            "--output-hook", "mlp.hook_out")) == 0
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 30


@pytest.mark.parametrize("change,message", [
    (("--features", "0"), "--features must be a positive integer, got 0"),
    (("--features", "-5"), "--features must be a positive integer, got -5"),
    (("--kind", "mlp"), "--kind: unknown transcoder kind 'mlp'"),
    (("--activation", "topk"), "--k is required with --activation topk"),
])
def test_bad_arguments_fail_before_loading_anything(workspace, capsys, change, message):
    args = _train_args(workspace, workspace / "bad")
    if change[0] in args:
        args[args.index(change[0]) + 1] = change[1]
    else:
        args += list(change)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (workspace / "bad").exists()


def test_corpus_too_small_for_one_batch(workspace, capsys):
    args = _train_args(workspace, workspace / "small")
    args[args.index("--corpus") + 1] = str(workspace / "tiny.jsonl")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "tiny.jsonl" in err and ("fewer than one batch" in err or "context window" in err)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(workspace, capsys):
    out = workspace / "nan"
    # an absurd learning rate overflows the weights within a few steps
    args = _train_args(workspace, out, "--checkpoint-every", "1", "--grad-clip", "0")
    args[args.index("--lr") + 1] = "1e38"
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "training stopped at step" in err and "last good checkpoint" in err
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    from safetensors.torch import load_file

    weights = load_file(str(out / "checkpoint" / "model.safetensors"))
    assert all(torch.isfinite(w.float()).all() for w in weights.values())
    assert f"(step {state['step']})" in err


def test_eval_transcoders_bad_inputs(workspace, capsys):
    code = main(["eval-transcoders", "--model", str(workspace / "model"), "--transcoders",
                 str(workspace / "missing"), "--corpus", str(workspace / "corpus.jsonl")])
    assert code == 1
    assert "missing" in capsys.readouterr().err
    code = main(["eval-transcoders", "--model", str(workspace / "model"), "--transcoders",
                 str(workspace / "run" / "transcoders"), "--corpus",
                 str(workspace / "nope.jsonl")])
    assert code == 1 and "nope.jsonl does not exist" in capsys.readouterr().err


def test_activation_cache_is_built_once_and_checked(workspace, capsys):
    cache = workspace / "acts"
    args = _train_args(workspace, workspace / "cached1", "--cache", str(cache),
                       "--cache-tokens", "600", "--no-circuit-tracer")
    args[args.index("--steps") + 1] = "8"
    assert main(args) == 0
    shards = sorted(p.name for p in cache.iterdir())
    assert "cache.json" in shards and "shard_00000.safetensors" in shards
    assert json.loads((cache / "cache.json").read_text())["total_tokens"] == 600
    before = (cache / "shard_00000.safetensors").stat().st_mtime_ns
    args[args.index("--out") + 1] = str(workspace / "cached2")
    assert main(args) == 0  # reuses the cache
    assert (cache / "shard_00000.safetensors").stat().st_mtime_ns == before
    assert not (workspace / "cached1" / "circuit_tracer").exists()
    args[args.index("--context-length") + 1] = "12"
    args[args.index("--out") + 1] = str(workspace / "cached3")
    assert main(args) == 1
    assert "was built for" in capsys.readouterr().err


def test_layers_out_of_range_and_k_above_width_fail_before_the_model_loads(workspace, capsys):
    args = _train_args(workspace, workspace / "bad-layers", "--layers", "1,5-6")
    args[args.index("--kind") + 1] = "plt"
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "--layers: layer 5 is out of range" in err and "has 2 layers" in err
    assert not (workspace / "bad-layers").exists()
    args = _train_args(workspace, workspace / "bad-k", "--activation", "topk", "--k", "25")
    assert main(args) == 1
    assert "--k (25) must not exceed --features (24)" in capsys.readouterr().err
    args = _train_args(workspace, workspace / "bad-clt", "--layers", "1")
    assert main(args) == 1
    assert "cross-layer transcoder couples every layer" in capsys.readouterr().err


def test_partial_run_then_init_from_completes_the_set(workspace, capsys):
    from circuit_atlas.errors import TranscoderFormatError
    from circuit_atlas.transcoders import load_transcoders

    part = workspace / "part"
    args = _train_args(workspace, part, "--layers", "1", "--activation", "topk", "--k", "3")
    args[args.index("--kind") + 1] = "plt"
    args[args.index("--steps") + 1] = "10"
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "holds only some layers" in printed and "export check (ok)" in printed
    assert not (part / "circuit_tracer").exists()
    with pytest.raises(TranscoderFormatError, match="partial set: it holds layer\\(s\\) 1 of a "
                                                    "2-layer model"):
        load_transcoders(str(part / "transcoders"))
    whole = workspace / "whole"
    args = _train_args(workspace, whole, "--layers", "0", "--activation", "topk", "--k", "3",
                       "--init-from", str(part / "transcoders"))
    args[args.index("--kind") + 1] = "plt"
    args[args.index("--steps") + 1] = "10"
    assert main(args) == 0
    capsys.readouterr()
    full = load_transcoders(str(whole / "circuit_tracer"))
    partial_layer = load_transcoders(str(whole / "transcoders"))
    assert full.n_layers == 2 and full.activation_name == "topk" and full.k == 3
    from safetensors.torch import load_file

    trained_alone = load_file(str(part / "transcoders" / "encoder_1.safetensors"))
    torch.testing.assert_close(full.encoder_weight(1), trained_alone["W_enc"])
    torch.testing.assert_close(partial_layer.encoder_weight(1), trained_alone["W_enc"])


def test_train_on_the_demo_model_with_default_context_length(tmp_path, capsys):
    """The demo model has 64 positions: the default 128-token windows shrink to fit, the layout
    is chosen by asking the model (single lines), and the exported configs name the model as
    it was given ("demo"), not the bundled folder's absolute path."""
    import yaml

    from circuit_atlas.demo import bundle, toyworld

    lines = toyworld.generate_corpus(bundle.demo_world(), 600, seed=5)
    corpus = tmp_path / "lines.jsonl"
    corpus.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))
    out = tmp_path / "run"
    assert main(["train", "--model", "demo", "--corpus", str(corpus), "--kind", "plt",
                 "--features", "32", "--activation", "batchtopk", "--k", "4", "--tokens",
                 "1024", "--batch-size", "256", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "windows: documents" in printed and "64-token windows" in printed
    assert "has 64 positions" in printed
    assert "export check" in printed and "loss recovered" in printed
    config = yaml.safe_load((out / "circuit_tracer" / "config.yaml").read_text())
    assert config["model_name"] == "demo"
    native = json.loads((out / "transcoders" / "circuit_atlas_transcoders.json").read_text())
    assert native["model_name"] == "demo" and native["activation"] == "jumprelu"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["windows"]["mode"] == "documents" and summary["context_length"] == 64
    assert summary["export_check"]["relative_gap"] is not None


def test_eval_on_packed_lines_refuses_loss_recovered_and_documents_give_it(tmp_path, capsys):
    """The demo model was trained on single lines: packed windows are text it cannot predict
    (zero-ablating its MLPs beats it there), so loss recovered is refused with the reason; one
    line per window gives a meaningful value."""
    from circuit_atlas.demo import bundle, toyworld

    lines = toyworld.generate_corpus(bundle.demo_world(), 200, seed=9)
    corpus = tmp_path / "lines.jsonl"
    corpus.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))
    reports = {}
    for layout in ("packed", "documents"):
        out = tmp_path / f"{layout}.json"
        assert main(["eval-transcoders", "--model", "demo", "--transcoders", "demo-plt",
                     "--corpus", str(corpus), "--windows", "4", "--layout", layout, "--quiet",
                     "--json", str(out)]) == 0
        reports[layout] = (json.loads(out.read_text()), capsys.readouterr().out)
    packed, printed = reports["packed"]
    assert packed["ce_zero_ablation"] <= packed["ce_original"]
    assert packed["loss_recovered"] is None and "try --layout documents" in printed
    documents, printed = reports["documents"]
    assert documents["ce_zero_ablation"] > documents["ce_original"]
    assert 0.5 < documents["loss_recovered"] <= 1 and "loss recovered   0." in printed
