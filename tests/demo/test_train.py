"""The demo training script: quick mode runs, saves a loadable model, learns, and is seeded."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from circuit_atlas.demo import train
from circuit_atlas.demo.train import TrainConfig, learning_rate, make_batch


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick")
    assert train.main(["--quick", "--out", str(out), "--threads", "1"]) == 0
    return out


def test_quick_run_saves_a_loadable_model(quick_run):
    model_dir = quick_run / "model"
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (model_dir / name).is_file(), name
    assert not list(model_dir.glob("*.bin"))  # safetensors only, no pickle
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    assert type(model).__name__ == "LlamaForCausalLM"
    ids = tok("the capital of texas is", return_tensors="pt")["input_ids"]
    assert ids[0, 0].item() == tok.bos_token_id
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tok))


def test_quick_run_learns_and_records_its_world(quick_run):
    data = json.loads((quick_run / "toyworld.json").read_text())
    metrics = data["metrics"]
    assert metrics["loss"] < metrics["initial_loss"] - 0.5
    assert data["training"]["steps"] == TrainConfig.quick().steps
    assert data["corpus"]["seed"] == data["world"]["seed"] == 0
    assert {i["city"] for i in data["eval"]["two_hop"]} == set(data["world"]["held_out_cities"])


def test_training_is_seeded(quick_run, tmp_path):
    train.train(TrainConfig.quick(threads=1), tmp_path, show_progress=False)
    first = load_file(str(quick_run / "model" / "model.safetensors"))
    second = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_learning_rate_schedule():
    cfg = TrainConfig(steps=1000, warmup_steps=100, lr=1e-3, min_lr_ratio=0.1)
    assert learning_rate(0, cfg) == pytest.approx(1e-5)
    assert learning_rate(99, cfg) == pytest.approx(1e-3)
    assert learning_rate(550, cfg) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert learning_rate(1000, cfg) == pytest.approx(1e-4)
    decay = [learning_rate(s, cfg) for s in range(100, 1001)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert not any(math.isnan(x) for x in decay)


def test_make_batch_masks_padding():
    ids, labels = make_batch([[1, 5, 6, 2], [1, 7, 2]], pad_id=0)
    assert ids.tolist() == [[1, 5, 6, 2], [1, 7, 2, 0]]
    assert labels.tolist() == [[1, 5, 6, 2], [1, 7, 2, -100]]
