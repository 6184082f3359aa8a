"""Every CLI mistake is one `error: ...` line (exit 1), found before any model is loaded.

Most tests name a model directory that does not exist: if a command got as far as loading, the
message would be "model directory ... does not exist" instead of the one asserted, so these tests
also prove the check runs first (and they stay fast).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from circuit_atlas.cli import main as cli_main
from circuit_atlas.cli.main import main


@pytest.fixture
def paths(tmp_path):
    """A missing model, an existing file, an existing folder and a small corpus."""
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    folder = tmp_path / "folder"
    folder.mkdir()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat\n\nthe dog ran\n")
    return {"model": str(tmp_path / "no-model"), "file": str(a_file), "dir": str(folder),
            "corpus": str(corpus), "tmp": tmp_path}


def _run(argv, capsys) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _model_args(p) -> list[str]:
    return ["--model", p["model"], "--transcoders", p["model"]]


# --------------------------------------------------------------------------- devices
def _device_commands(p, device: str) -> dict[str, list[str]]:
    model = _model_args(p)
    return {
        "trace": ["trace", *model, "--prompt", "the cat", "--out", p["dir"], "--device", device],
        "steer": ["steer", *model, "--prompt", "the cat", "--ablate", "0:-1:1", "--device", device],
        "serve": ["serve", p["dir"], *model, "--device", device, "--no-browser"],
        "features build": ["features", "build", *model, "--corpus", p["corpus"], "--out",
                           p["tmp"] / "store", "--device", device],
        "train": ["train", "--model", p["model"], "--corpus", p["corpus"], "--kind", "clt",
                  "--features", "16", "--out", p["tmp"] / "run", "--device", device],
        "eval-transcoders": ["eval-transcoders", *model, "--corpus", p["corpus"], "--device", device],
    }


@pytest.mark.parametrize("command", ["trace", "steer", "serve", "features build", "train",
                                     "eval-transcoders"])
@pytest.mark.parametrize("device, words", [("banana", "is not a device name"),
                                           ("cuda:99", "cuda:99")])
def test_unusable_device_is_one_line_naming_it_and_what_is_available(paths, capsys, command, device, words):
    err = _run(_device_commands(paths, device)[command], capsys)
    assert f"--device '{device}'" in err and words in err and "available here: cpu" in err


# --------------------------------------------------------------------------- output paths
def test_trace_outputs_are_checked_before_loading(paths, capsys):
    base = ["trace", *_model_args(paths), "--prompt", "the cat"]
    assert "--out" in _run([*base, "--out", paths["file"]], capsys)
    err = _run([*base, "--out", f"{paths['file']}/sub"], capsys)
    assert "is a file, so nothing can be created under it" in err
    assert "--slug: slug '../x' is not valid" in _run([*base, "--out", paths["dir"], "--slug", "../x"], capsys)
    taken = paths["tmp"] / "folder" / "the-cat"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    assert "not a circuit-atlas graph bundle" in _run([*base, "--out", paths["dir"]], capsys)


def test_train_outputs_are_checked_before_loading(paths, capsys):
    base = ["train", "--model", paths["model"], "--corpus", paths["corpus"], "--kind", "clt",
            "--features", "16", "--device", "cpu"]
    assert f"--out {paths['file']} is a file" in _run([*base, "--out", paths["file"]], capsys)
    run_dir = paths["tmp"] / "run"
    run_dir.mkdir()
    (run_dir / "transcoders").write_text("in the way")
    assert "transcoders is a file, but the run writes a folder" in _run([*base, "--out", run_dir], capsys)
    err = _run([*base, "--out", paths["tmp"] / "run2", "--cache", paths["file"]], capsys)
    assert f"--cache {paths['file']} is a file" in err


def test_eval_json_must_be_a_file(paths, capsys):
    err = _run(["eval-transcoders", *_model_args(paths), "--corpus", paths["corpus"], "--json",
                paths["dir"]], capsys)
    assert f"--json {paths['dir']} is a folder" in err


def test_features_build_out_must_be_a_folder(paths, capsys):
    err = _run(["features", "build", *_model_args(paths), "--corpus", paths["corpus"], "--out",
                paths["file"]], capsys)
    assert f"--out {paths['file']} is a file" in err


def test_unforeseen_os_error_is_one_line(monkeypatch, capsys):
    def broken(args):
        raise NotADirectoryError(20, "Not a directory", "graphs/x/y")

    monkeypatch.setattr("circuit_atlas.cli.export.run", broken)
    assert _run(["export", "anything"], capsys) == "error: graphs/x/y: not a directory\n"
    assert cli_main.describe_os_error(OSError("disk on fire")) == "disk on fire"


# --------------------------------------------------------------------------- numbers
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max-new-tokens", "-2"], "--max-new-tokens must be 0 (no generation) or more, got -2"),
        (["--temperature", "-1"], "--temperature must be a finite number ≥ 0"),
        (["--top-p", "0"], "--top-p must lie in (0, 1]"),
    ],
)
def test_steer_sampling_numbers(paths, capsys, extra, message):
    argv = ["steer", *_model_args(paths), "--prompt", "the cat", "--ablate", "0:-1:1", *extra]
    assert message in _run(argv, capsys)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["--max-feature-nodes", "-1"], "--max-feature-nodes must be at least 0"),
        (["--max-n-logits", "0"], "--max-n-logits must be at least 1"),
        (["--desired-logit-prob", "0"], "--desired-logit-prob must lie in (0, 1]"),
    ],
)
def test_trace_numbers(paths, capsys, extra, message):
    argv = ["trace", *_model_args(paths), "--prompt", "the cat", "--out", paths["dir"], *extra]
    assert message in _run(argv, capsys)


# --------------------------------------------------------------------------- help texts
@pytest.mark.parametrize("action", ["build", "show", "label"])
def test_features_help_has_an_example_and_one_default_each(capsys, action):
    with pytest.raises(SystemExit) as exc:
        main(["features", action, "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal width
    assert "examples:" in text and f"circuit-atlas features {action} " in text.split("examples:")[1]
    assert "(default: None)" not in text
    if action == "build":
        assert text.count("default: 16") == 1 and "min(128, the model's maximum)" in text


# --------------------------------------------------------------------------- export
def test_export_accepts_a_trace_bundle_and_points_into_a_data_folder(tmp_path, capsys):
    from circuit_atlas.graph import random_graph, to_graph_json
    from circuit_atlas.graph.bundle import write_graph_bundle

    graph = random_graph(n_layers=2, n_pos=4, n_sel=10, n_logits=2, seed=7)
    bundle = write_graph_bundle(graph, tmp_path / "graphs", "dallas")
    (bundle / "dallas.json").unlink()  # so the file checked below is the one export writes
    assert main(["export", str(bundle), "--node-threshold", "0.6"]) == 0
    written = json.loads((bundle / "dallas.json").read_text())
    assert written == to_graph_json(graph, "dallas", 0.6, 0.98)
    capsys.readouterr()
    err = _run(["export", tmp_path / "graphs"], capsys)
    assert "holding graph bundles (dallas)" in err and f"circuit-atlas export {bundle}" in err


def test_export_out_must_not_be_a_folder(tmp_path, capsys):
    (tmp_path / "v2.json").mkdir()
    assert "is a folder" in _run(["export", tmp_path, "--out", tmp_path / "v2.json"], capsys)


# --------------------------------------------------------------------------- eval context length
def test_eval_clamps_the_context_to_the_model_positions(tmp_path, capsys):
    from circuit_atlas.models.tiny import WORDS, tiny_language_model
    from circuit_atlas.transcoders.random import random_transcoders

    lm = tiny_language_model("llama", seed=1, n_layers=2, d_model=32)
    assert lm.max_positions == 64
    lm.save(tmp_path / "model")
    random_transcoders("plt", n_layers=2, d_model=32, n_features=16, seed=2,
                       input_hook="hook_resid_mid", output_hook="hook_mlp_out").save_native(tmp_path / "tc")
    # 8 documents of 96 words: enough for two 128-token windows, so an unclamped run would pass
    # (packed windows, so that the count is two full windows).
    (tmp_path / "corpus.txt").write_text("\n\n".join(" ".join(WORDS) for _ in range(8)))
    out = tmp_path / "eval.json"
    code = main(["eval-transcoders", "--model", str(tmp_path / "model"), "--transcoders",
                 str(tmp_path / "tc"), "--corpus", str(tmp_path / "corpus.txt"), "--windows", "2",
                 "--layout", "packed", "--json", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "exceeds the 64 positions" in err and "evaluating 64-token windows" in err
    assert json.loads(out.read_text())["n_tokens"] == 2 * 64


# --------------------------------------------------------------------------- a real process
def test_bad_invocation_in_a_real_process_exits_1_without_traceback(paths):
    """In-process tests cannot see a traceback Python prints on the way out; a subprocess can."""
    proc = subprocess.run(
        [sys.executable, "-m", "circuit_atlas.cli.main", "trace", *_model_args(paths), "--prompt",
         "the cat", "--out", paths["dir"], "--device", "banana"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert "error: --device 'banana' is not a device name" in proc.stderr
    assert "Traceback" not in proc.stderr
