"""`circuit-atlas trace --prompts FILE`: one bundle per line, done lines skipped, bad lines named,
and under torchrun the lines dealt out to two gloo ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from circuit_atlas.cli.main import main
from circuit_atlas.graph import Graph
from circuit_atlas.server.catalog import GraphCatalog

LINES = [
    '"the capital of Texas is"',
    '{"prompt": "the capital of Ohio is", "slug": "ohio", "targets": ["Austin", 7]}',
    "",
    '{"token_ids": [1, 8, 14, 9], "slug": "ids", "logit_diff": ["Austin", "Dallas"]}',
]


def _args(pair, prompts, out, *extra):
    return ["trace", "--model", str(pair[0]), "--transcoders", str(pair[1]), "--prompts", str(prompts),
            "--out", str(out), "--max-feature-nodes", "20", "--device", "cpu", *extra]


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_one_bundle_per_line_and_a_rerun_skips_what_is_done(saved_pair, tmp_path, capsys):
    prompts = _write(tmp_path / "p.jsonl", LINES)
    out = tmp_path / "graphs"
    assert main(_args(saved_pair, prompts, out)) == 0
    printed = capsys.readouterr().out
    assert "3 prompts: 0 already traced, 3 to trace" in printed
    first = Graph.load(out / "the-capital-of-texas-is" / "graph")
    assert first.prompt.endswith("the capital of Texas is")
    ohio = Graph.load(out / "ohio" / "graph")
    assert ohio.logit_tokens[0] == "Austin" and int(ohio.logit_token_ids[1]) == 7
    ids = Graph.load(out / "ids" / "graph")
    assert torch.equal(ids.input_ids, torch.tensor([1, 8, 14, 9])) and ids.logit_tokens == ["Austin − Dallas"]
    assert {e.slug for e in GraphCatalog(out).refresh()} == {"the-capital-of-texas-is", "ohio", "ids"}

    stamp = (out / "ohio" / "graph" / "graph.safetensors").stat().st_mtime_ns
    assert main(_args(saved_pair, prompts, out)) == 0
    assert "3 prompts: 3 already traced, 0 to trace" in capsys.readouterr().out
    assert (out / "ohio" / "graph" / "graph.safetensors").stat().st_mtime_ns == stamp

    # a changed line (other targets) is traced again, the others are not
    changed = LINES[:1] + ['{"prompt": "the capital of Ohio is", "slug": "ohio", "targets": ["Dallas"]}'] + LINES[2:]
    assert main(_args(saved_pair, _write(prompts, changed), out)) == 0
    assert "1 already" not in (text := capsys.readouterr().out) and "2 already traced, 1 to trace" in text
    assert Graph.load(out / "ohio" / "graph").logit_tokens == ["Dallas"]
    # other settings make every line new again; --force retraces regardless
    assert main(_args(saved_pair, prompts, out, "--max-n-logits", "3")) == 0
    assert "0 already traced, 3 to trace" in capsys.readouterr().out
    assert main(_args(saved_pair, prompts, out, "--max-n-logits", "3", "--force")) == 0
    assert "0 already traced, 3 to trace" in capsys.readouterr().out


def test_bad_lines_are_all_named_before_the_model_loads(tmp_path, capsys):
    prompts = _write(tmp_path / "bad.jsonl", [
        '{"prompt": "ok", "slug": "a"}',
        "{not json",
        '{"prompt": "x", "target": ["y"]}',
        '{"prompt": "x", "targets": ["y"], "logit_diff": ["a", "b"]}',
        '{"token_ids": [1, -2]}',
        '{"prompt": "ok", "slug": "a"}',
        '{"prompt": "ok", "slug": "../escape"}',
        '[1, 2]',
    ])
    missing = (tmp_path / "no-model", tmp_path / "no-transcoders")
    assert main(_args(missing, prompts, tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "7 bad line(s)" in err
    for number, words in [(2, "not valid JSON"), (3, "unknown key(s) 'target'"), (4, "not both"),
                          (5, "non-negative integers"), (6, "already used by line 1"),
                          (7, "not valid"), (8, "got list")]:
        assert f"line {number}: " in err and words in err, (number, err)
    assert not (tmp_path / "out").exists()


def test_targets_that_are_not_single_tokens_are_named_before_tracing(saved_pair, tmp_path, capsys):
    prompts = _write(tmp_path / "p.jsonl", ['{"prompt": "the cat", "targets": ["the cat"]}',
                                            '{"prompt": "a dog", "logit_diff": ["Austin", 100000]}'])
    assert main(_args(saved_pair, prompts, tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert "line 1: target 'the cat' is not a single token" in err
    assert "line 2: target token id 100000 is outside the vocabulary" in err
    assert not any((tmp_path / "out").glob("*/bundle.json"))


def test_single_prompt_flags_are_refused_with_prompts(saved_pair, tmp_path, capsys):
    prompts = _write(tmp_path / "p.jsonl", LINES[:1])
    assert main(_args(saved_pair, prompts, tmp_path / "out", "--targets", "Austin")) == 1
    assert '"targets" on the lines of the file' in capsys.readouterr().err


def test_two_ranks_share_the_lines(saved_pair, tmp_path):
    prompts = _write(tmp_path / "p.jsonl", LINES + ['{"prompt": "the capital of Iowa is", "slug": "iowa"}'])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "circuit_atlas.cli.main", *_args(saved_pair, prompts, tmp_path / "two")]
    run = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "4 prompts: 0 already traced, 4 to trace on 2 ranks" in run.stdout
    for number in (1, 2, 4, 5):  # every line traced once, by one of the ranks
        assert run.stdout.count(f"line {number} ") == 1, run.stdout
    assert main(_args(saved_pair, prompts, tmp_path / "one")) == 0
    for slug in ("the-capital-of-texas-is", "ohio", "ids", "iowa"):
        assert Graph.load(tmp_path / "two" / slug / "graph") == Graph.load(tmp_path / "one" / slug / "graph")
        record = json.loads((tmp_path / "two" / slug / ".trace-request.json").read_text())
        assert record["settings"]["max_feature_nodes"] == 20
