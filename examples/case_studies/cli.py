"""The command line every case-study script shares (`examples/case_study_<name>.py`).

    python examples/case_study_<name>.py [--work DIR] [--docs docs/case-studies] [--no-screenshots]

Each script supplies `measure(work) -> results`, `figures(work, docs, results) -> [png paths]`
and `summary(results) -> str`; this runs them and writes `<docs>/<results_name>`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Callable

import torch


def run_case_study(argv, *, description: str, results_name: str, work_prefix: str,
                   measure: Callable[[Path], dict],
                   figures: Callable[[Path, Path, dict], list[Path]],
                   summary: Callable[[dict], str]) -> int:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--docs", type=Path, default=Path("docs/case-studies"))
    parser.add_argument("--no-screenshots", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # figures are quoted from one-thread runs
    work = args.work or Path(tempfile.mkdtemp(prefix=work_prefix))
    (args.docs / "img").mkdir(parents=True, exist_ok=True)
    results = measure(work)
    (args.docs / results_name).write_text(json.dumps(results, indent=1) + "\n")
    print(summary(results))
    if not args.no_screenshots:
        for path in figures(work, args.docs, results):
            print(f"wrote {path}")
    print(f"work folder: {work}")
    return 0
