"""Feature-store build throughput with 1 and with N ranks (torchrun), on the bundled demo model.

Each build runs `circuit-atlas features build` in fresh processes (a plain process for one rank,
`torchrun --standalone --nproc-per-node N` otherwise) on the same corpus with the same settings,
and reads the tokens/s the command prints (the build itself: logit effects, the corpus pass and,
with several ranks, the merge; model loading excluded). Every rank runs `--threads` CPU threads.
The CPU column is the
processes' whole user + system time (imports and model loading included), which tells whether the
ranks added work or only shared it. After the runs the stores are compared table by table: the N-rank store must equal the one-rank
store row for row.

The corpus is toy-world text (`circuit_atlas.demo.toyworld`), `--lines-per-doc` lines per
document, so windows are full like those of real text.

    python benchmarks/features_ranks.py                        # 1 and 2 ranks, CPU
    python benchmarks/features_ranks.py --ranks 1 2 4 --device cuda --tokens 2000000
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RATE = re.compile(r"this run: ([\d,]+) tokens in ([\d.]+) s")


def write_corpus(path: Path, n_tokens: int, lines_per_doc: int) -> None:
    from circuit_atlas.demo.bundle import demo_world
    from circuit_atlas.demo.toyworld import generate_corpus

    n_lines = n_tokens // 7 + 1  # toy-world lines hold about 7-8 words (one token each)
    lines = generate_corpus(demo_world(), n_lines, seed=123)
    docs = [" ".join(lines[i:i + lines_per_doc]) for i in range(0, len(lines), lines_per_doc)]
    path.write_text("\n".join('{"text": "%s"}' % d for d in docs) + "\n", encoding="utf-8")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def build(ranks: int, corpus: Path, out: Path, args) -> tuple[int, float]:
    command = ["features", "build", "--model", "demo", "--transcoders", "demo", "--corpus",
               str(corpus), "--out", str(out), "--max-tokens", str(args.tokens), "--batch-size",
               str(args.batch_size), "--block-documents", str(args.block_documents), "--device",
               args.device, "--no-progress"]
    if ranks == 1:
        launcher = [sys.executable, "-m", "circuit_atlas.cli.main"]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc-per-node={ranks}", "-m", "circuit_atlas.cli.main"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    run = subprocess.run(launcher + command, env=env, capture_output=True, text=True, check=False)
    match = RATE.search(run.stdout)
    if run.returncode != 0 or match is None:
        raise SystemExit(f"{ranks} rank(s) failed:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
    return int(match.group(1).replace(",", "")), float(match.group(2))


def rows(folder: Path) -> dict[str, list]:
    conn = sqlite3.connect(f"file:{folder / 'features.sqlite'}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall()) for t in tables}
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tokens", type=int, default=60000, help="--max-tokens of every build")
    parser.add_argument("--lines-per-doc", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--block-documents", type=int, default=16,
                        help="documents per block (the unit ranks share out)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per rank")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3, help="runs per rank count (median)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        write_corpus(corpus, args.tokens * 2, args.lines_per_doc)
        print(f"demo model + CLT, {args.tokens:,} tokens per build, batch {args.batch_size}, "
              f"blocks of {args.block_documents} documents of {args.lines_per_doc} lines, "
              f"{args.threads} thread(s) per rank, device {args.device}, median of {args.repeat}")
        print(f"{'ranks':>5} {'tokens':>8} {'seconds':>8} {'tok/s':>9} {'speed-up':>8} {'CPU s':>7}  runs (s)")
        base = None
        stores = {}
        for ranks in args.ranks:
            times, cpu = [], []
            for run in range(args.repeat):
                out = Path(tmp) / f"r{ranks}-{run}"
                before = children_cpu_seconds()
                tokens, seconds = build(ranks, corpus, out, args)
                cpu.append(children_cpu_seconds() - before)
                times.append(seconds)
                stores.setdefault(ranks, out)
            seconds = statistics.median(times)
            rate = tokens / seconds
            base = base or rate
            print(f"{ranks:>5} {tokens:>8,} {seconds:>8.2f} {rate:>9,.0f} {rate / base:>8.2f} "
                  f"{statistics.median(cpu):>7.1f}  "
                  + " ".join(f"{t:.2f}" for t in times))
        reference = rows(stores[args.ranks[0]])
        for ranks, folder in stores.items():
            same = rows(folder) == reference
            print(f"store of {ranks} rank(s) equals the {args.ranks[0]}-rank store: {same}")


if __name__ == "__main__":
    main()
