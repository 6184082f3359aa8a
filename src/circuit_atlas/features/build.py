"""`build_feature_store`: stream a corpus through model + transcoders into a feature store.

Flow: check settings and corpus before touching the store; create it (or reopen it and check
that it was built with the same model, transcoders, corpus and settings: `open_store.py`); then
run the build loop (`builder.py`: logit effects, then the corpus block by block, with commits
that make the store resumable after any interruption).

Inside a `torch.distributed` process group of several processes (`torchrun --nproc-per-node N
-m circuit_atlas.cli.main features build ...`), every rank builds a shard from its own blocks of
the corpus and rank 0 merges the shards into one store, identical to the one a single process
builds from the same corpus and settings (`shards.py`).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from circuit_atlas.features import shards
from circuit_atlas.features.builder import KILL_ENV, KILL_RANK_ENV, RunOptions, StoreBuilder
from circuit_atlas.features.open_store import exclusive_build, identity, open_store
from circuit_atlas.features.ranks import current_ranks
from circuit_atlas.features.settings import BuildReport, BuildSettings, check_not_empty, check_settings
from circuit_atlas.features.sources import open_feature_corpus
from circuit_atlas.io.corpus import Corpus

__all__ = ["BuildReport", "BuildSettings", "KILL_ENV", "KILL_RANK_ENV", "build_feature_store"]


def build_feature_store(
    model,
    corpus: Corpus | str | Path | Sequence[str],
    out: str | Path,
    settings: BuildSettings = BuildSettings(),
    *,
    batch_size: int = 16,
    commit_interval: float = 60.0,
    progress: bool = True,
) -> BuildReport:
    """Build (or resume) the feature store in folder `out` for `model` (a `ReplacementModel`).

    `corpus`: a `Corpus`, or anything `sources.open_feature_corpus` accepts. Called on every rank
    of a `torch.distributed` process group, the ranks share the work (see the module docstring);
    every rank gets the report of the whole store.
    """
    started = time.perf_counter()
    context_len = check_settings(model, settings, batch_size)
    settings = BuildSettings(**{**asdict(settings), "context_len": context_len})
    if not isinstance(corpus, Corpus):
        corpus = open_feature_corpus(corpus)
    check_not_empty(corpus)
    wanted = identity(model, corpus, settings)
    out = Path(out).expanduser()
    ranks = current_ranks()
    options = RunOptions(batch_size=batch_size, commit_interval=commit_interval, progress=progress)
    if ranks.world_size > 1:
        report = shards.build_sharded(model, corpus, out, settings, wanted, ranks, options)
    else:
        report = _build_alone(model, corpus, out, settings, wanted, options)
    report.seconds = time.perf_counter() - started
    return report


def _build_alone(model, corpus: Corpus, out: Path, settings: BuildSettings, wanted: dict,
                 options: RunOptions) -> BuildReport:
    with exclusive_build(out):
        shards.check_no_sharded_build(out)
        conn, resumed = open_store(out, model, wanted)
        try:
            builder = StoreBuilder(model, corpus, settings, conn, options)
            reason, new_tokens = builder.run(resumed)
        finally:
            conn.close()
    return BuildReport(out=out, tokens=builder.tokens, documents=builder.documents(),
                       windows=builder.windows, complete=reason != "interrupted",
                       stop_reason=reason, resumed=resumed, new_tokens=new_tokens, seconds=0.0)
