"""`circuit-atlas features build | show | label` end to end on a tiny saved model."""

from __future__ import annotations

import json
import random

import pytest
import torch

from circuit_atlas.cli.main import main


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from circuit_atlas.models.tiny import WORDS, tiny_language_model
    from circuit_atlas.transcoders.random import random_transcoders

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cli")
    tiny_language_model("llama", n_layers=2, d_model=16, seed=0).save(root / "model")
    random_transcoders("plt", n_layers=2, d_model=16, n_features=12, seed=1,
                       input_hook="hook_resid_mid", output_hook="hook_mlp_out").save_native(root / "tc")
    random_transcoders("plt", n_layers=2, d_model=8, n_features=12, seed=1,
                       input_hook="hook_resid_mid", output_hook="hook_mlp_out").save_native(root / "narrow")
    rng = random.Random(0)
    lines = [json.dumps({"body": " ".join(rng.choice(WORDS[:60]) for _ in range(rng.randint(2, 30)))})
             for _ in range(15)]
    (root / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _build(root, out, *extra):
    return ["features", "build", "--model", str(root / "model"), "--transcoders", str(root / "tc"),
            "--corpus", str(root / "corpus.jsonl"), "--text-field", "body", "--out", str(out),
            "--context-len", "16", "--device", "cpu", *extra]


def test_build_show_and_label(inputs, tmp_path, capsys):
    out = tmp_path / "store"
    assert main(_build(inputs, out, "--max-tokens", "150")) == 0
    captured = capsys.readouterr()
    assert "complete: reached --max-tokens; 150 tokens" in captured.out
    assert "tok/s" in captured.err  # the progress bar reports throughput
    assert main(["features", "label", str(out), "1", "4", "repeats the subject"]) == 0
    assert main(["features", "show", str(out), "1", "4"]) == 0
    shown = capsys.readouterr().out
    assert "layer 1 feature 4 — repeats the subject" in shown and "Top activations" in shown
    assert main(["features", "show", str(out), "1", "4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["index"] == 4 and data["label"] == "repeats the subject"
    assert main(["features", "label", str(out), "1", "4", ""]) == 0
    assert "label removed" in capsys.readouterr().out


def test_user_mistakes_print_one_line_errors(inputs, tmp_path, capsys):
    assert main(_build(inputs, tmp_path / "a", "--corpus", str(tmp_path / "nope.jsonl"))) == 1
    assert "error: corpus" in capsys.readouterr().err
    narrow = _build(inputs, tmp_path / "b", "--no-progress")
    narrow[narrow.index("--transcoders") + 1] = str(inputs / "narrow")
    assert main(narrow) == 1
    err = capsys.readouterr().err
    assert "\nerror: transcoders" in "\n" + err.replace("\r", "\n") and "d_model=8" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()
    assert main(["features", "show", str(tmp_path), "0", "0"]) == 1
    assert "no feature store" in capsys.readouterr().err
    assert main(["features"]) == 2
