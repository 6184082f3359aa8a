"""The other side of `benchmarks/training_comparison.py`: EleutherAI's sparsify with its defaults.

Optional and separate: run it with a Python that has `eai-sparsify` installed (a venv of its own,
torch installed first so pip does not pull a CUDA build), e.g.

    python -m venv /tmp/sparsify-venv && /tmp/sparsify-venv/bin/pip install torch==2.13.0 \\
        && /tmp/sparsify-venv/bin/pip install eai-sparsify==1.3.3
    PYTHONPATH=src /tmp/sparsify-venv/bin/python benchmarks/training_sparsify.py --out /tmp/sp

It trains sparsify's transcoder of the demo model's layer-2 MLP (1024 latents, TopK k=8, every
other setting sparsify's default) on the same single toy-world lines as our side (same seed and
count), one line per sequence, right-padded with padding and BOS excluded from training
(`exclude_tokens`), and writes sparsify's own files (`<out>/demo-l2/layers.2.mlp/`: the MLP's input, after the
pre-MLP norm, to its output) plus `<out>/timing.json`.
The comparison script evaluates them with the same code as ours. Only the corpus generator is
taken from circuit-atlas (pure Python), so no circuit-atlas dependency is needed here.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

TRAIN_LINES, TRAIN_SEED, PAD_WIDTH = 420_000, 101, 16


def main() -> None:
    import torch
    from datasets import Dataset
    from sparsify import SaeConfig, Trainer, TrainConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from circuit_atlas.demo import bundle, toyworld

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--lines", type=int, default=TRAIN_LINES)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model_dir = bundle.ASSETS_DIR / "model"
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    lines = toyworld.generate_corpus(bundle.demo_world(), args.lines, seed=TRAIN_SEED)
    random.Random(0).shuffle(lines)  # sparsify reads its dataset in order
    ids = tokenizer(lines)["input_ids"]
    pad = tokenizer.pad_token_id
    rows = [row + [pad] * (PAD_WIDTH - len(row)) for row in ids]
    dataset = Dataset.from_dict({"input_ids": rows}).with_format("torch")
    real_tokens = sum(len(row) - 1 for row in ids)  # BOS excluded, as on our side
    cfg = TrainConfig(SaeConfig(num_latents=1024, k=8, transcode=True),
                      hookpoints=["layers.2.mlp"],
                      exclude_tokens=[pad, tokenizer.bos_token_id], log_to_wandb=False,
                      save_dir=str(args.out), run_name="demo-l2", save_every=10**9)
    started = time.perf_counter()
    Trainer(cfg, dataset, model).fit()
    seconds = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "timing.json").write_text(json.dumps(
        {"seconds": seconds, "tokens": real_tokens, "tokens_per_second": real_tokens / seconds,
         "lines": args.lines, "settings": "sparsify defaults; num_latents=1024, k=8, "
                                          "transcode=True, hookpoints=['layers.2.mlp']"}))
    print(json.dumps({"seconds": round(seconds), "tokens_per_second": real_tokens / seconds}))


if __name__ == "__main__":
    main()
