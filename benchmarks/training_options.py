"""What the options of long runs buy, measured with `circuit-atlas train` on the demo model.

* end-to-end KL term (`--kl-coefficient`): held-out FVU and loss recovered with and without it,
  on a set that replaces every MLP (4 layers, small dictionaries, so there is loss to recover);
* several seeds in one run (`--seeds`): wall time of three seeds in lockstep against one seed
  (the model's passes are shared);
* keep-the-best (`--keep-best`): which evaluation was best, and by how much it beat the last.

    python benchmarks/training_options.py --work /tmp/opts [--tokens 400000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
BASE = ["--model", "demo", "--kind", "plt", "--features", "128", "--activation", "topk",
        "--k", "4", "--eval-windows", "400", "--quiet"]


def corpus(work: Path, lines: int) -> Path:
    from circuit_atlas.demo import bundle, toyworld

    path = work / "lines.jsonl"
    if not path.exists():
        text = toyworld.generate_corpus(bundle.demo_world(), lines, seed=11)
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in text))
    return path


def train(work: Path, name: str, data: Path, tokens: int, *flags: str) -> tuple[Path, float]:
    out = work / name
    command = [sys.executable, "-m", "circuit_atlas.cli.main", "train", "--corpus", str(data),
               "--tokens", str(tokens), "--out", str(out), "--no-resume", *BASE, *flags]
    started = time.perf_counter()
    subprocess.run(command, check=True, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
                   stdout=subprocess.DEVNULL)
    return out, time.perf_counter() - started


def held_out(folder: Path) -> dict:
    summary = json.loads((folder / "summary.json").read_text())
    report = summary["held_out"]
    fvu = sum(r["fvu"] for r in report["layers"]) / len(report["layers"])
    return {"fvu": fvu, "loss_recovered": report["loss_recovered"],
            "best_step": summary["best_step"], "steps": summary["steps"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--tokens", type=int, default=400_000)
    parser.add_argument("--kl", type=float, nargs="+", default=[1.0, 10.0])
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    data = corpus(args.work, 120_000)
    rows = []
    base, base_time = train(args.work, "plain", data, args.tokens)
    rows.append(("no KL term", held_out(base), base_time))
    for weight in args.kl:
        out, seconds = train(args.work, f"kl{weight:g}", data, args.tokens,
                             "--kl-coefficient", str(weight))
        rows.append((f"--kl-coefficient {weight:g}", held_out(out), seconds))
    print("| run | held-out FVU (mean of 4 layers) | loss recovered | wall time |")
    print("|---|---:|---:|---:|")
    for name, result, seconds in rows:
        print(f"| {name} | {result['fvu']:.4f} | {result['loss_recovered']:.4f} | "
              f"{seconds:.0f} s |")
    seeds, seeds_time = train(args.work, "seeds", data, args.tokens, "--seeds", "0,1,2")
    fvus = [held_out(seeds / f"seed-{s}")["fvu"] for s in (0, 1, 2)]
    print(f"\nthree seeds in lockstep: {seeds_time:.0f} s (one seed: {base_time:.0f} s, ratio "
          f"{seeds_time / base_time:.2f}); held-out FVU per seed "
          f"{', '.join(f'{f:.4f}' for f in fvus)}")
    best, _ = train(args.work, "best", data, args.tokens, "--eval-every", "200",
                    "--keep-best", "loss_recovered")
    records = [json.loads(line) for line in (best / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["step"], r["eval"]["loss_recovered"]) for r in records if "eval" in r]
    result = held_out(best)
    print(f"\nkeep-best by loss recovered: best at step {result['best_step']} of "
          f"{result['steps']}; evaluations {', '.join(f'{s}:{v:.4f}' for s, v in evals)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
