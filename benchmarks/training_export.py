"""Does the exported set compute what was trained? BatchTopK on the demo model.

Trains a BatchTopK set with `circuit-atlas train` (default: a 4-layer CLT, 1024 features, k=4, on
single toy-world lines), then compares on held-out activations (other lines, never trained on):

* the trained stack with its training activation (BatchTopK over each batch),
* the export as it is written now (JumpReLU, per-feature thresholds fitted after training),
* the export as it used to be written (JumpReLU, one threshold per layer: the running batch
  cut-off),

by FVU and L0 per layer, plus the held-out loss recovered the run itself reports.

    python benchmarks/training_export.py --work /tmp/export [--kind plt] [--tokens 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--kind", default="clt")
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=4)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from circuit_atlas.demo import bundle, toyworld
    from circuit_atlas.models import load_language_model
    from circuit_atlas.training.architecture import TranscoderStack
    from circuit_atlas.training.checkpoint import read_checkpoint
    from circuit_atlas.training.config import architecture_from_dict
    from circuit_atlas.io.corpus import open_corpus
    from circuit_atlas.training.export import to_transcoders
    from circuit_atlas.training.fidelity import export_fidelity
    from circuit_atlas.training.streaming import ModelActivationSource

    args.work.mkdir(parents=True, exist_ok=True)
    world = bundle.demo_world()
    corpus = args.work / "lines.jsonl"
    if not corpus.exists():
        lines = toyworld.generate_corpus(world, 200_000, seed=21)
        corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    out = args.work / f"{args.kind}-batchtopk"
    if not (out / "summary.json").exists():
        subprocess.run([sys.executable, "-m", "circuit_atlas.cli.main", "train", "--model", "demo",
                        "--corpus", str(corpus), "--kind", args.kind, "--features", "1024",
                        "--activation", "batchtopk", "--k", str(args.k), "--tokens",
                        str(args.tokens), "--eval-windows", "400", "--out", str(out), "--quiet"],
                       check=True, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    summary = json.loads((out / "summary.json").read_text())
    saved = read_checkpoint(out / "checkpoint")
    stack = TranscoderStack(architecture_from_dict(saved.state["architecture"]))
    stack.load_state_dict(saved.model)
    lm = load_language_model("demo", device="cpu")
    held_out = toyworld.generate_corpus(world, 6000, seed=22)
    source = ModelActivationSource(lm, open_corpus(held_out), input_hook="hook_resid_mid",
                                   output_hook="hook_mlp_out", context_length=64,
                                   model_batch_size=64, buffer_tokens=40_000,
                                   windows="documents")
    batch = summary["optim"]["batch_size"]
    batches = [source.next_batch(batch) for _ in range(40_000 // batch)]
    rows = {}
    rows["per-feature thresholds (now)"] = export_fidelity(
        stack, batches, to_transcoders(stack, input_hook="in", output_hook="out"))
    with torch.no_grad():
        stack.feature_threshold.copy_(stack.threshold_estimate[:, None].expand_as(
            stack.feature_threshold))
    rows["one threshold per layer (before)"] = export_fidelity(
        stack, batches, to_transcoders(stack, input_hook="in", output_hook="out"))
    first = next(iter(rows.values()))
    print(f"{args.kind}, BatchTopK k={args.k}, {summary['tokens']} training tokens, "
          f"{first.tokens} held-out tokens in batches of {batch}")
    print("| | FVU per layer | mean FVU | mean L0 |")
    print("|---|---|---:|---:|")
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    print(f"| trained (BatchTopK) | {', '.join(f'{v:.4f}' for v in first.trained_fvu)} | "
          f"{mean(first.trained_fvu):.4f} | {mean(first.trained_l0):.2f} |")
    for name, fid in rows.items():
        print(f"| exported, {name} | {', '.join(f'{v:.4f}' for v in fid.exported_fvu)} | "
              f"{mean(fid.exported_fvu):.4f} | {mean(fid.exported_l0):.2f} |")
    report = summary["held_out"]
    print(f"\nthe run's own held-out evaluation of the export: mean FVU "
          f"{mean([r['fvu'] for r in report['layers']]):.4f}, loss recovered "
          f"{report['loss_recovered']:.4f}; its export check: "
          f"{summary['export_check']['relative_gap']:+.2%}; "
          f"{summary['tokens_per_second']:.0f} tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
