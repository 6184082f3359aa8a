"""Feature-store build throughput with 1 and with N ranks (torchrun), on the bundled demo model.

Each build runs in fresh processes (a plain process for one rank, `torchrun --standalone
--nproc-per-node N` otherwise) on the same corpus with the same settings; every rank times its
own `build_feature_store` call (the build itself: logit effects, the corpus pass and, with several
ranks, the merge; imports and model loading excluded), in wall-clock seconds and in CPU seconds of
its process. Every rank runs `--threads` CPU threads.

Columns: `seconds` / `tok/s` are the wall clock of the slowest rank; `CPU s` the rank CPU seconds
summed, `max rank CPU s` the busiest rank's. On a machine with a free core (or GPU) per rank the
wall clock approaches the busiest rank's CPU time, so `CPU speed-up` = one rank's CPU seconds /
the busiest rank's is the speed-up the ranks make possible; `speed-up` is what this machine
delivered (lower when other processes share its cores). After the runs the stores are compared
table by table: the N-rank store must equal the one-rank store row for row.

The corpus is toy-world text (`circuit_atlas.demo.toyworld`), `--lines-per-doc` lines per
document, so windows are full like those of real text.

    python benchmarks/features_ranks.py                        # 1 and 2 ranks, CPU
    python benchmarks/features_ranks.py --ranks 1 2 4 --device cuda --tokens 2000000
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RESULT = "RANK_RESULT "


def write_corpus(path: Path, n_tokens: int, lines_per_doc: int) -> None:
    from circuit_atlas.demo.bundle import demo_world
    from circuit_atlas.demo.toyworld import generate_corpus

    n_lines = n_tokens // 7 + 1  # toy-world lines hold about 7-8 words (one token each)
    lines = generate_corpus(demo_world(), n_lines, seed=123)
    docs = [" ".join(lines[i:i + lines_per_doc]) for i in range(0, len(lines), lines_per_doc)]
    path.write_text("\n".join('{"text": "%s"}' % d for d in docs) + "\n", encoding="utf-8")


def worker(args) -> None:
    """One rank: join the process group (if any), build, print this rank's timings."""
    import json
    import time

    import torch

    import circuit_atlas
    from circuit_atlas.features import BuildSettings, build_feature_store
    from circuit_atlas.io import distributed

    torch.set_num_threads(args.threads)
    distributed.init_from_environment()
    model = circuit_atlas.load("demo", "demo", device=args.device)
    settings = BuildSettings(max_tokens=args.tokens, block_documents=args.block_documents)
    wall, cpu = time.perf_counter(), time.process_time()
    report = build_feature_store(model, args.corpus, args.out, settings, batch_size=args.batch_size,
                                 progress=False)
    result = {"rank": distributed.rank(), "tokens": report.tokens,
              "wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}
    distributed.shutdown()
    print(RESULT + json.dumps(result), flush=True)


def build(ranks: int, corpus: Path, out: Path, args) -> list[dict]:
    """Timings of every rank of one build."""
    import json

    own = [__file__, "--worker", "--corpus", str(corpus), "--out", str(out), "--tokens", str(args.tokens),
           "--batch-size", str(args.batch_size), "--block-documents", str(args.block_documents),
           "--threads", str(args.threads), "--device", args.device]
    if ranks == 1:
        command = [sys.executable, *own]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={ranks}", *own]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    run = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    found = [json.loads(line.split(RESULT, 1)[1]) for line in run.stdout.splitlines() if RESULT in line]
    if run.returncode != 0 or len(found) != ranks:
        raise SystemExit(f"{ranks} rank(s) failed:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
    return found


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
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        write_corpus(corpus, args.tokens * 2, args.lines_per_doc)
        print(f"demo model + CLT, {args.tokens:,} tokens per build, batch {args.batch_size}, "
              f"blocks of {args.block_documents} documents of {args.lines_per_doc} lines, "
              f"{args.threads} thread(s) per rank, device {args.device}, median of {args.repeat}")
        print(f"{'ranks':>5} {'seconds':>8} {'tok/s':>8} {'speed-up':>8} {'CPU s':>7} "
              f"{'max rank CPU s':>14} {'CPU speed-up':>12}  wall of each run (s)")
        base = base_cpu = None
        stores = {}
        for ranks in args.ranks:
            runs = []
            for run in range(args.repeat):
                out = Path(tmp) / f"r{ranks}-{run}"
                runs.append(build(ranks, corpus, out, args))
                stores.setdefault(ranks, out)
            walls = [max(r["wall"] for r in found) for found in runs]
            wall = statistics.median(walls)
            cpu = statistics.median(sum(r["cpu"] for r in found) for found in runs)
            busiest = statistics.median(max(r["cpu"] for r in found) for found in runs)
            rate = args.tokens / wall
            base, base_cpu = base or rate, base_cpu or busiest
            print(f"{ranks:>5} {wall:>8.2f} {rate:>8,.0f} {rate / base:>8.2f} {cpu:>7.1f} "
                  f"{busiest:>14.1f} {base_cpu / busiest:>12.2f}  " + " ".join(f"{w:.2f}" for w in walls))
        reference = rows(stores[args.ranks[0]])
        for ranks, folder in stores.items():
            same = rows(folder) == reference
            print(f"store of {ranks} rank(s) equals the {args.ranks[0]}-rank store: {same}")


if __name__ == "__main__":
    main()
