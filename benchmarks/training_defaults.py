"""Measure training settings on stored activations: how `OptimConfig` defaults were chosen.

Model passes dominate a training run on a CPU, and every setting compared here sees the same
activations, so they are computed once (`--collect`) and stored; each variant then trains on
them from memory and is scored on held-out activations with the *exported* transcoders:
FVU, L0, the share of features that never fire on the held-out tokens, and training tokens/s.

The data are those of `benchmarks/training_comparison.py`: the demo model, the layer-2 MLP
(`hook_resid_mid` → `hook_mlp_out`), single toy-world lines (BOS + words, as the model was
trained), ~3.0M training tokens and ~72k held-out tokens.

    python benchmarks/training_defaults.py --collect --data /tmp/acts
    python benchmarks/training_defaults.py --data /tmp/acts \\
        --variant "defaults:" --variant "lr2e-3:lr=2e-3" --variant "norm:arch.normalize_decoder=1"

A variant is `name:key=value,...`; keys are `OptimConfig` fields, or `arch.<field>` for
`ArchitectureConfig` ones (kind plt, 1024 features, TopK k=8 unless overridden).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")

TRAIN_LINES, HELDOUT_LINES, TRAIN_SEED, HELDOUT_SEED, LAYER = 420_000, 10_000, 101, 202, 2


def collect(data: Path) -> None:
    """Layer-2 MLP pairs of the demo model over single toy-world lines, float32, in `data`."""
    from circuit_atlas.demo import bundle, toyworld
    from circuit_atlas.demo.activations import encode_lines, equal_length_batches
    from circuit_atlas.models import load_language_model

    lm = load_language_model("demo", device="cpu")
    world = bundle.demo_world()
    data.mkdir(parents=True, exist_ok=True)
    for name, n_lines, seed in (("heldout", HELDOUT_LINES, HELDOUT_SEED),
                                ("train", TRAIN_LINES, TRAIN_SEED)):
        ids = encode_lines(lm.tokenizer, toyworld.generate_corpus(world, n_lines, seed=seed))
        xs, ys = [], []
        with torch.no_grad():
            for tokens in equal_length_batches(ids, 512):
                rec = lm.forward(tokens, input_hook="hook_resid_mid", output_hook="hook_mlp_out",
                                 record_internals=False, compute_logits=False)
                xs.append(rec.inputs[LAYER][:, 1:].reshape(-1, lm.d_model).clone())
                ys.append(rec.outputs[LAYER][:, 1:].reshape(-1, lm.d_model).clone())
        torch.save({"x": torch.cat(xs), "y": torch.cat(ys)}, data / f"{name}.pt")
        print(f"{name}: {sum(x.shape[0] for x in xs)} tokens", flush=True)


def parse_variant(text: str) -> tuple[str, dict, dict]:
    name, _, settings = text.partition(":")
    optim, arch = {}, {}
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        target = arch if key.startswith("arch.") else optim
        target[key.removeprefix("arch.")] = _value(value)
    return name, optim, arch


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"none": None, "true": True, "false": False}.get(text.lower(), text)


def run_variant(name: str, optim_overrides: dict, arch_overrides: dict, train, heldout,
                tokens: int) -> dict:
    from circuit_atlas.training import (ArchitectureConfig, OptimConfig, TensorActivationSource,
                                        Trainer, to_transcoders)
    from circuit_atlas.training.metrics import MetricSums

    arch_values = dict(kind="plt", n_layers=1, d_model=train["x"].shape[-1], n_features=1024,
                       activation="topk", k=8)
    arch_values.update(arch_overrides)
    for key in ("normalize_decoder", "center_encoder"):
        if key in arch_values:
            arch_values[key] = bool(arch_values[key])
    arch = ArchitectureConfig(**arch_values)
    batch = int(optim_overrides.get("batch_size", 4096))
    optim = OptimConfig(**{"steps": max(1, tokens // batch), "log_every": 100,
                           "mixed_precision": "none", **optim_overrides})
    source = TensorActivationSource(train["x"][:, None], train["y"][:, None], seed=optim.seed)
    trainer = Trainer(arch, optim, source, device="cpu", progress=False)
    started = time.perf_counter()
    result = trainer.run()
    seconds = time.perf_counter() - started
    tc = to_transcoders(result.stack, input_hook="hook_resid_mid", output_hook="hook_mlp_out")
    sums, fired = None, torch.zeros(arch.n_features, dtype=torch.bool)
    with torch.no_grad():
        for start in range(0, heldout["x"].shape[0], 8192):
            x, y = heldout["x"][start:start + 8192], heldout["y"][start:start + 8192]
            acts = tc.encode(0, x)
            part = MetricSums.from_batch(tc.reconstruct(0, {0: acts}, x)[:, None], y[:, None],
                                         acts[:, None])
            sums = part if sums is None else sums.add(part)
            fired |= (acts != 0).any(0)
    resolved = trainer.optim
    return {"variant": name, "fvu": sums.fvu()[0], "l0": sums.l0()[0],
            "never_fire": 1 - fired.float().mean().item(),
            "train_fvu": result.metrics["mean_fvu"],
            "export_gap": result.fidelity.relative_gap if result.fidelity else None,
            "tokens_per_s": optim.steps * optim.batch_size / seconds, "steps": optim.steps,
            "lr": resolved.lr, "warmup": resolved.lr_warmup_steps,
            "dead_after": resolved.dead_after_tokens,
            "settings": {**optim_overrides, **{f"arch.{k}": v for k, v in arch_overrides.items()}}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of the stored pairs")
    parser.add_argument("--collect", action="store_true", help="compute and store the pairs")
    parser.add_argument("--variant", action="append", default=[], help="name:key=value,...")
    parser.add_argument("--tokens", type=int, default=None,
                        help="training tokens per variant (default: all stored)")
    parser.add_argument("--json", type=Path, help="append result records to this JSONL file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.collect:
        collect(args.data)
    if not args.variant:
        return 0
    train, heldout = torch.load(args.data / "train.pt"), torch.load(args.data / "heldout.pt")
    tokens = args.tokens or int(train["x"].shape[0])
    print(f"{'variant':<24} {'FVU':>8} {'L0':>5} {'never':>6} {'gap':>7} {'tok/s':>7}  settings")
    for text in args.variant:
        record = run_variant(*parse_variant(text), train, heldout, tokens)
        gap = record["export_gap"]
        print(f"{record['variant']:<24} {record['fvu']:>8.5f} {record['l0']:>5.2f} "
              f"{record['never_fire']:>6.1%} {'' if gap is None else f'{gap:+.2%}':>7} "
              f"{record['tokens_per_s']:>7.0f}  lr={record['lr']:.2g} warmup={record['warmup']} "
              f"dead_after={record['dead_after']} {json.dumps(record['settings'])}", flush=True)
        if args.json is not None:
            with args.json.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
