"""`circuit-atlas steer` end to end on a tiny model and transcoders saved to local folders."""

from __future__ import annotations

import json

import pytest

import circuit_atlas
from circuit_atlas.cli.main import main
from circuit_atlas.cli.steer import parse_intervention, parse_layers, parse_position
from circuit_atlas.errors import InterventionError
from circuit_atlas.interventions import Intervention, generate, intervene
from circuit_atlas.models.tiny import tiny_language_model
from circuit_atlas.transcoders.random import random_transcoders

PROMPT = "the capital of France is"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("steer")
    lm = tiny_language_model("llama", seed=4, n_layers=2, d_model=32)
    tc = random_transcoders("clt", n_layers=2, d_model=32, n_features=40, seed=9,
                            input_hook="hook_resid_mid", output_hook="hook_mlp_out")
    lm.save(root / "model")
    tc.save_native(root / "tc")
    return str(root / "model"), str(root / "tc")


def test_steer_prints_before_and_after(saved, capsys) -> None:
    model_dir, tc_dir = saved
    code = main(["steer", "--model", model_dir, "--transcoders", tc_dir, "--prompt", PROMPT,
                 "--set", "0:-1..:3=25", "--ablate", "1:2:0,1", "--max-new-tokens", "4", "--top-k", "3"])
    out = capsys.readouterr().out
    assert code == 0
    model = circuit_atlas.load(model_dir, tc_dir)
    ivs = [Intervention(0, slice(-1, None), 3, value=25.0), Intervention(1, 2, [0, 1], ablate=True)]
    expected = intervene(model, PROMPT, ivs, top_k=3)
    continuation = generate(model, PROMPT, ivs, 4)
    lines = out.splitlines()
    assert lines[0] == "prompt: '<bos> the capital of France is' (6 tokens)"
    assert "L0 @5 ' is' #3: " in out and "-> 25" in out
    table = lines[lines.index("top next tokens:") + 2 :][:3]
    for row, before, after in zip(table, expected.top_before, expected.top_after):
        assert f"{before.token!r} {before.prob:.3f}" in row
        assert row.rstrip().endswith(f"{after.token!r} {after.prob:.3f}")
    assert f"default: {continuation.default.text!r}" in out
    assert f"steered: {continuation.steered.text!r}" in out
    assert continuation.default.text != continuation.steered.text


def test_steer_json_and_constrained(saved, capsys) -> None:
    model_dir, tc_dir = saved
    code = main(["steer", "--model", model_dir, "--transcoders", tc_dir, "--token-ids", "1,20,21,22",
                 "--scale", "0:*:5=3", "--mode", "constrained", "--constrained-layers", "0-1",
                 "--max-new-tokens", "0", "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["generation"] is None
    assert data["intervention"]["mode"] == "constrained" and data["intervention"]["constrained_layers"] == [0, 1]
    model = circuit_atlas.load(model_dir, tc_dir)
    expected = intervene(model, [1, 20, 21, 22], Intervention(0, None, 5, scale=3.0), mode="constrained")
    assert [t["token_id"] for t in data["intervention"]["top_after"]] == [t.token_id for t in expected.top_after[:5]]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "7:1:3=2"], "layer 7 is out of range 0..1"),
        (["--set", "0:1:99=2"], "feature 99 is out of range 0..39"),
        (["--set", "0:40:3=2"], "position 40 is out of range"),
        (["--set", "0:1:3=nan"], "value must be a finite number"),
        (["--set", "0:1:3"], "expected LAYER:POS:FEATURE=VALUE"),
        (["--ablate", "0:1:3=1"], "expected LAYER:POS:FEATURE"),
        (["--scale", "0:x:3=2"], "position 'x' must be an integer"),
        ([], "give at least one --set, --scale or --ablate"),
        (["--ablate", "0:1:3", "--constrained-layers", "a-b", "--mode", "constrained"], "use layers and ranges"),
    ],
)
def test_steer_bad_arguments(saved, capsys, extra, message) -> None:
    model_dir, tc_dir = saved
    code = main(["steer", "--model", model_dir, "--transcoders", tc_dir, "--prompt", PROMPT, *extra])
    err = capsys.readouterr().err
    assert code == 1
    assert message in err and "Traceback" not in err


def test_parsers() -> None:
    assert parse_position("*") is None and parse_position("-1") == -1
    assert parse_position("3..") == slice(3, None) and parse_position("..4") == slice(None, 4)
    assert parse_position("2..5") == slice(2, 5)
    item = parse_intervention("4 : -2.. : 10,11 = -1.5", "scale")
    assert (item.layer, item.position, item.features) == (4, slice(-2, None), (10, 11))
    assert (item.op, item.mul) == ("scale", -1.5)
    assert parse_layers("0-2,5") == [0, 1, 2, 5] and parse_layers(None) is None
    with pytest.raises(InterventionError):
        parse_intervention("1:2:3=4", "ablate")


@pytest.mark.parametrize("extra", [["--temperature", "1e-300"], ["--temperature", "5e-324"],
                                   ["--temperature", "1", "--top-p", "1e-300"]])
def test_steer_tiny_temperature_and_top_p_are_greedy(saved, capsys, extra) -> None:
    """They used to end in "probability tensor contains inf or nan" (a raw traceback)."""
    model_dir, tc_dir = saved
    base = ["steer", "--model", model_dir, "--transcoders", tc_dir, "--prompt", PROMPT,
            "--scale", "0:-1..:3=4", "--max-new-tokens", "5", "--json"]
    assert main(base) == 0
    greedy = json.loads(capsys.readouterr().out)["generation"]
    assert main(base + extra) == 0
    tiny = json.loads(capsys.readouterr().out)["generation"]
    for side in ("default", "steered"):
        assert tiny[side]["token_ids"] == greedy[side]["token_ids"]
