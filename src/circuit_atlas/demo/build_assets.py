"""Build the demo's transcoders and feature dashboards: `python -m circuit_atlas.demo.build_assets`.

Steps (all seeded; the model itself comes from `circuit_atlas.demo.train`):

1. draw three toy-world corpora from the bundled world with seeds of their own: transcoder
   training lines, held-out evaluation lines and dashboard lines;
2. record the model's MLP (input, output) pairs (`hook_resid_mid` -> `hook_mlp_out`) over the
   training lines, one line per sequence (`demo.activations`);
3. train a cross-layer transcoder (and a per-layer one) with `circuit_atlas.training.Trainer`,
   evaluate them on the held-out lines (FVU, L0, loss recovered) and export them in the native
   format into `OUT/transcoders/<kind>/`, with `OUT/transcoders/report.json`;
4. build a feature store over the dashboard lines for each kind (`circuit_atlas.features`) into
   `OUT/features/<kind>/` and label features automatically (`demo.labels` states the rule).

OUT defaults to the package's `assets/` folder. `--quick` trains tiny sets for a few steps on a
few hundred lines (CI; under a minute) and needs an explicit `--out`, so it never replaces the
shipped assets. Training checkpoints go to `--work`: give one to make an interrupted build resume
(rerun the same command); by default they go to a fresh temporary folder, so a stale checkpoint
(say, of a retrained model) can never be picked up by accident. `--relabel` only rewrites the
automatic labels of the existing stores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from circuit_atlas.demo import bundle, toyworld
from circuit_atlas.demo.labels import label_store
from circuit_atlas.demo.transcoders import (TranscoderSettings, collect_pairs, evaluate_on_lines,
                                            report_entry, train_transcoders)
from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.features import BuildSettings, FeatureStore, build_feature_store
from circuit_atlas.io.presets import DEMO
from circuit_atlas.models import load_language_model
from circuit_atlas.replacement import load

TRAIN_SEED, EVAL_SEED, DASHBOARD_SEED = 101, 202, 303


@dataclass
class BuildConfig:
    """Sizes of one build; `quick()` is the CI variant."""
    train_lines: int = 16_000
    eval_lines: int = 2_000
    dashboard_lines: int = 20_000
    transcoders: list[TranscoderSettings] = field(default_factory=lambda: [
        TranscoderSettings(kind="clt", n_features=1024, k=4, steps=500),
        TranscoderSettings(kind="plt", n_features=1024, k=4, steps=400),
    ])
    dashboard_kinds: tuple[str, ...] = ("clt", "plt")
    top_k: int = 16
    n_samples: int = 16
    context_before: int = 15
    context_after: int = 4
    threads: int = 1

    @classmethod
    def quick(cls) -> "BuildConfig":
        return cls(train_lines=600, eval_lines=100, dashboard_lines=300,
                   transcoders=[TranscoderSettings(kind="clt", n_features=64, k=4, steps=8,
                                                   batch_size=256),
                                TranscoderSettings(kind="plt", n_features=64, k=4, steps=8,
                                                   batch_size=256)],
                   dashboard_kinds=("clt",), top_k=6, n_samples=6)


def model_reference(model_dir: str | Path | None) -> str:
    """The model as the stores record it: "demo" for the bundled model, else the folder exactly as
    given. Never the resolved bundle path: that is the build machine's install location, which
    would leak into every shipped store and make the assets differ from one checkout to another."""
    return DEMO if model_dir is None else str(model_dir)


def build(out: Path, cfg: BuildConfig, *, work: Path, model_dir: str | Path | None = None,
          progress: bool = True) -> dict:
    """Run every step into `out`; returns the report written to `transcoders/report.json`."""
    torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    model_ref = model_reference(model_dir)
    lm = load_language_model(model_ref, device="cpu")
    world = bundle.demo_world()
    train = toyworld.generate_corpus(world, cfg.train_lines, seed=TRAIN_SEED)
    held_out = toyworld.generate_corpus(world, cfg.eval_lines, seed=EVAL_SEED)
    pairs = collect_pairs(lm, train, progress=progress)
    report = {"format": "circuit-atlas-demo-transcoders/1", "model": model_ref,
              "corpora": {"train": {"seed": TRAIN_SEED, "lines": cfg.train_lines},
                          "held_out": {"seed": EVAL_SEED, "lines": cfg.eval_lines},
                          "dashboards": {"seed": DASHBOARD_SEED, "lines": cfg.dashboard_lines}},
              "sets": {}}
    for settings in cfg.transcoders:
        t0 = time.perf_counter()
        tc = train_transcoders(lm, pairs, settings, work / settings.kind, progress=progress)
        seconds = time.perf_counter() - t0
        target = out / "transcoders" / settings.kind
        if target.exists():
            shutil.rmtree(target)
        tc.save_native(target)
        evaluation = evaluate_on_lines(lm, tc, held_out)
        report["sets"][settings.kind] = report_entry(settings, evaluation, int(pairs[0].shape[0]),
                                                     seconds)
        print(f"{settings.kind}: trained in {seconds:.0f} s\n{evaluation.table()}", flush=True)
    del pairs
    (out / "transcoders").mkdir(parents=True, exist_ok=True)
    (out / "transcoders" / bundle.TRANSCODER_REPORT).write_text(json.dumps(report, indent=1) + "\n")
    dashboards = toyworld.generate_corpus(world, cfg.dashboard_lines, seed=DASHBOARD_SEED)
    for kind in cfg.dashboard_kinds:
        model = load(model_ref, str(out / "transcoders" / kind), device="cpu")
        n_labels = build_dashboards(model, dashboards, out / "features" / kind, cfg, world,
                                    progress=progress)
        report["sets"][kind]["labelled_features"] = n_labels
    report["build_seconds"] = round(time.perf_counter() - started, 1)
    (out / "transcoders" / bundle.TRANSCODER_REPORT).write_text(json.dumps(report, indent=1) + "\n")
    return report


def rebuild_dashboards(out: Path, cfg: BuildConfig, *, model_dir: str | Path | None = None,
                       progress: bool = True) -> dict[str, int]:
    """Rebuild only the feature stores of the transcoders already in `out` (label counts by kind).

    Each store is built in a sibling folder and swapped in when complete, so readers never see a
    half-built store.
    """
    torch.set_num_threads(cfg.threads)
    model_ref = model_reference(model_dir)
    world = bundle.demo_world()
    lines = toyworld.generate_corpus(world, cfg.dashboard_lines, seed=DASHBOARD_SEED)
    counts = {}
    for kind in cfg.dashboard_kinds:
        model = load(model_ref, str(out / "transcoders" / kind), device="cpu")
        target = out / "features" / kind
        fresh = target.with_name(kind + ".rebuilding")
        counts[kind] = build_dashboards(model, lines, fresh, cfg, world, progress=progress)
        if target.exists():
            shutil.rmtree(target)
        fresh.rename(target)
    return counts


def build_dashboards(model, lines: list[str], folder: Path, cfg: BuildConfig, world, *,
                     progress: bool = True) -> int:
    """A fresh feature store over `lines` in `folder`, auto-labelled; returns the label count."""
    if folder.exists():
        shutil.rmtree(folder)  # a store built for other transcoders cannot be resumed
    settings = BuildSettings(context_len=model.lm.max_positions, top_k=cfg.top_k,
                             n_samples=cfg.n_samples, context_before=cfg.context_before,
                             context_after=cfg.context_after, seed=DASHBOARD_SEED)
    build_feature_store(model, lines, folder, settings, batch_size=256, progress=progress)
    compact(folder)
    return relabel(folder, world, progress=progress)


def relabel(folder: Path, world, *, progress: bool = True) -> int:
    """(Re)write the automatic labels of the store in `folder`; returns how many were set."""
    with FeatureStore(folder) as store:
        count = len(label_store(store, world, progress=progress))
    for lock in (".build.lock", ".labels.lock"):  # lock files of a finished build: not assets
        (folder / lock).unlink(missing_ok=True)
    labels = folder / "labels.json"
    if labels.is_file():
        labels.chmod(0o644)  # written 0600 by the atomic writer; installed files must be readable
    return count


def compact(folder: Path) -> None:
    """VACUUM the finished store and leave it in rollback-journal mode: the shipped file is then
    one self-contained, minimal SQLite file that read-only readers leave untouched."""
    conn = sqlite3.connect(folder / "features.sqlite", isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("VACUUM")
    finally:
        conn.close()


def asset_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m circuit_atlas.demo.build_assets",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="assets folder (default: the package's own)")
    parser.add_argument("--work", type=Path,
                        help="checkpoint folder; reruns resume from it (default: a fresh temporary one)")
    parser.add_argument("--model-dir", help="demo model folder, recorded in the stores as typed "
                                             "(default: the bundled one, recorded as \"demo\")")
    parser.add_argument("--quick", action="store_true", help="tiny build for CI (needs --out)")
    parser.add_argument("--relabel", action="store_true",
                        help="only rewrite the automatic labels of the existing stores")
    parser.add_argument("--dashboards-only", action="store_true",
                        help="only rebuild the feature stores (dashboards and labels) of the existing "
                             "transcoders")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.quick and args.out is None:
            raise CircuitAtlasError("--quick needs --out: a quick build must not replace the "
                                    "shipped assets")
        out = (args.out or bundle.ASSETS_DIR).resolve()
        work = args.work or Path(tempfile.mkdtemp(prefix="circuit-atlas-demo-build-"))
        cfg = BuildConfig.quick() if args.quick else BuildConfig()
        cfg.threads = args.threads
        if args.relabel:
            for kind in cfg.dashboard_kinds:
                folder = out / "features" / kind
                count = relabel(folder, bundle.demo_world(), progress=not args.quiet)
                compact(folder)
                print(f"{kind}: {count} labelled features")
            return 0
        if args.dashboards_only:
            for kind, count in rebuild_dashboards(out, cfg, model_dir=args.model_dir,
                                                  progress=not args.quiet).items():
                print(f"{kind}: {count} labelled features")
            return 0
        report = build(out, cfg, work=work, model_dir=args.model_dir, progress=not args.quiet)
    except CircuitAtlasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = {kind: entry["held_out"] | {"labelled_features": entry.get("labelled_features")}
               for kind, entry in report["sets"].items()}
    print(json.dumps(summary, indent=1))
    print(f"built in {report['build_seconds']:.0f} s; {out} holds "
          f"{asset_bytes(out) / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
