"""Train the bundled demo model: a small `LlamaForCausalLM` on the toy-world corpus, on CPU.

Run `python -m circuit_atlas.demo.train --out DIR` (or `scripts/train_demo.py`); `--quick` trains a
few steps on a tiny corpus for CI. The loop is plain PyTorch (AdamW, linear warm-up then cosine
decay, one seed for corpus, initialisation and batch order) so every figure in the report can be
reproduced from the command line alone. DIR receives `model/` (weights as safetensors + tokenizer,
both via `save_pretrained`) and `toyworld.json` (seed, world facts, held-out evaluation sets,
training settings and the measured accuracies), the layout `circuit_atlas.demo.bundle` reads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from circuit_atlas.demo import toyworld
from circuit_atlas.demo.evaluate import next_token_accuracy, sequence_accuracy
from circuit_atlas.demo.tokenizer import build_tokenizer
from circuit_atlas.errors import CircuitAtlasError

WORLD_FILE = "toyworld.json"
MODEL_DIR = "model"


@dataclasses.dataclass
class TrainConfig:
    """Everything that determines the trained model; saved next to it."""

    seed: int = 0
    n_lines: int = 300_000
    steps: int = 3000
    batch_size: int = 128
    lr: float = 3e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 200
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512
    held_out_per_region: int = 3
    eval_every: int = 250
    threads: int = 1

    @classmethod
    def quick(cls, **overrides) -> "TrainConfig":
        """CI settings: a tiny corpus and model, a few steps; finishes in seconds."""
        base = dict(n_lines=2000, steps=20, batch_size=32, warmup_steps=5, d_model=64,
                    n_layers=2, n_heads=2, d_ff=128, eval_every=20, threads=1)
        return cls(**{**base, **overrides})


def model_config(cfg: TrainConfig, vocab_size: int) -> LlamaConfig:
    """The Llama config of the demo model; special ids match `demo.tokenizer`."""
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads, max_position_embeddings=64, rms_norm_eps=1e-5,
        tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )


def encode_corpus(tokenizer, lines: Sequence[str],
                  chunk: int = 10_000) -> list[tuple[int, ...]]:
    """Each line as <bos> words <eos>; <eos> teaches the model where a sum (or fact) ends.

    Encoded in chunks and kept as tuples: the tokenizer's per-line encoding objects would take
    gigabytes for the full corpus on a machine shared with others.
    """
    eos, unk = tokenizer.eos_token_id, tokenizer.unk_token_id
    encoded: list[tuple[int, ...]] = []
    for start in range(0, len(lines), chunk):
        part = list(lines[start:start + chunk])
        for line, ids in zip(part, tokenizer(part)["input_ids"]):
            if unk in ids:
                raise CircuitAtlasError(f"corpus line has a word outside the vocabulary: {line!r}")
            encoded.append((*ids, eos))
    return encoded


def make_batch(sequences: Sequence[Sequence[int]],
               pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and labels (-100 on padding). Right padding needs no attention mask in
    a causal model: real tokens never attend to the pads after them."""
    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), -100, dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = torch.tensor(seq)
        labels[row, :len(seq)] = torch.tensor(seq)
    return ids, labels


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to `lr`, then cosine decay to `lr * min_lr_ratio` at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def evaluate_world(model, tokenizer, world: toyworld.World) -> dict[str, float]:
    """The accuracies the report quotes: held-out two-hop (the headline), the same question on
    training cities, one-hop region recall of held-out cities, addition and multilingual."""
    model.eval()
    held = toyworld.two_hop_eval(world)
    seen = toyworld.two_hop_eval(world, world.training_cities)
    one_hop = toyworld.one_hop_eval(world)
    addition = toyworld.addition_eval(world)
    multi = toyworld.multilingual_eval(world)
    result = {
        "two_hop_held_out": next_token_accuracy(model, tokenizer, [i.prompt for i in held],
                                                [i.answer for i in held]),
        "two_hop_train": next_token_accuracy(model, tokenizer, [i.prompt for i in seen],
                                             [i.answer for i in seen]),
        "one_hop_held_out": next_token_accuracy(model, tokenizer, [i.prompt for i in one_hop],
                                                [i.answer for i in one_hop]),
        "addition_held_out": sequence_accuracy(model, tokenizer, [i.prompt for i in addition],
                                               [i.answer for i in addition]),
        "multilingual_held_out": next_token_accuracy(model, tokenizer, [i.prompt for i in multi],
                                                     [i.answer for i in multi]),
    }
    model.train()
    return result


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def train(cfg: TrainConfig, out_dir: str | Path | None = None, *, show_progress: bool = True):
    """Build world, corpus and tokenizer from `cfg.seed`, train, evaluate, and save to `out_dir`.

    Returns (model, tokenizer, world, metrics). `metrics["history"]` has the periodic evaluations.
    """
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    world = toyworld.build_world(cfg.seed, held_out_per_region=cfg.held_out_per_region)
    tokenizer = build_tokenizer(toyworld.vocabulary_words(world))
    data = encode_corpus(tokenizer, toyworld.generate_corpus(world, cfg.n_lines, seed=cfg.seed))
    model = LlamaForCausalLM(model_config(cfg, len(tokenizer)))
    model.train()
    # no weight decay on norm gains (1-D): decaying them toward 0 only fights the RMSNorm scale
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    order_rng = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(data), generator=order_rng).tolist()
    cursor, history, start, initial_loss = 0, [], time.time(), None
    bar = tqdm(range(cfg.steps), desc="train demo model", disable=not show_progress,
               file=sys.stdout, mininterval=5)
    for step in bar:
        if cursor + cfg.batch_size > len(order):
            order, cursor = torch.randperm(len(data), generator=order_rng).tolist(), 0
        ids, labels = make_batch([data[i] for i in order[cursor:cursor + cfg.batch_size]],
                                 tokenizer.pad_token_id)
        cursor += cfg.batch_size
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg)
        loss = model(input_ids=ids, labels=labels).loss
        initial_loss = loss.item() if initial_loss is None else initial_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            scores = evaluate_world(model, tokenizer, world)
            history.append({"step": step + 1, "loss": round(loss.item(), 4),
                            "elapsed_s": round(time.time() - start, 1),
                            **{k: round(v, 4) for k, v in scores.items()}})
            print(json.dumps(history[-1]), flush=True)
    metrics = {**history[-1], "initial_loss": round(initial_loss, 4), "history": history}
    if out_dir is not None:
        save_bundle(out_dir, model, tokenizer, world, cfg, metrics)
    return model, tokenizer, world, metrics


def save_bundle(out_dir: str | Path, model, tokenizer, world: toyworld.World, cfg: TrainConfig,
                metrics: dict) -> None:
    """Write `model/` (safetensors weights, config, tokenizer) and `toyworld.json`."""
    out = Path(out_dir)
    (out / MODEL_DIR).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out / MODEL_DIR), safe_serialization=True)
    tokenizer.save_pretrained(str(out / MODEL_DIR))
    payload = {
        "format": "circuit-atlas-toyworld/1",
        "corpus": {"seed": cfg.seed, "n_lines": cfg.n_lines, "mix": toyworld.DEFAULT_MIX},
        "world": world.to_json(),
        "eval": {
            "two_hop": [dataclasses.asdict(i) for i in toyworld.two_hop_eval(world)],
            "one_hop": [dataclasses.asdict(i) for i in toyworld.one_hop_eval(world)],
            "addition": [dataclasses.asdict(i) for i in toyworld.addition_eval(world)],
            "multilingual": [dataclasses.asdict(i) for i in toyworld.multilingual_eval(world)],
        },
        "training": dataclasses.asdict(cfg),
        "metrics": metrics,
    }
    (out / WORLD_FILE).write_text(json.dumps(payload, indent=1) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     prog="python -m circuit_atlas.demo.train")
    parser.add_argument("--out", required=True, help="directory for model/ and toyworld.json")
    parser.add_argument("--quick", action="store_true", help="tiny run for CI (seconds)")
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        default = getattr(defaults, field.name)
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(default), default=None,
                            help=f"default {default}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name) is not None}
    cfg = TrainConfig.quick(**overrides) if args.quick else TrainConfig(**overrides)
    try:
        _, _, _, metrics = train(cfg, args.out)
    except CircuitAtlasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = {k: v for k, v in metrics.items() if k != "history"}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
