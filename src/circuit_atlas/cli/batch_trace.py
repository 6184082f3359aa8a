"""`circuit-atlas trace --prompts FILE`: one graph bundle per line of a prompts file.

Every line is checked before the model loads (`prompt_file.py`), and its targets right after
(they need the tokenizer), so a typo on line 900 stops the run before hours of tracing, naming
the line. Lines already traced are skipped: a bundle is done when it is complete (its
`bundle.json` is written last) and its hidden `.trace-request.json` records the same request
(prompt or ids, targets, model, transcoders and the settings that change the graph); a line whose
request changed is traced again. `--force` traces every line.

Under `torchrun` the lines still to do are dealt out to the ranks in turn (rank r traces items r,
r + N, ...), each rank on its own GPU; `--out` must then be a folder all ranks share. A line that
fails (e.g. a memory refusal) is reported and the others go on; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from circuit_atlas.cli.common import check_output_dir, rank_placement
from circuit_atlas.cli.prompt_file import PromptRequest, read_prompt_file
from circuit_atlas.errors import CircuitAtlasError

REQUEST_FILE = ".trace-request.json"
POLL_SECONDS = 2.0


def run_batch(args: argparse.Namespace, *, check_numbers, check_destination, feature_labels) -> int:
    """The batch form of `trace` (the single-prompt helpers of `trace.py` are passed in)."""
    from circuit_atlas.io.checks import check_slug
    from circuit_atlas.io import distributed

    _refuse_single_prompt_flags(args)
    check_numbers(args)
    check_output_dir(args.out, "--out")
    requests = read_prompt_file(args.prompts, check_slug)
    _check_destinations(args.out, requests, check_destination)
    labels = feature_labels(args.features)
    settings = _settings_record(args)
    distributed.init_from_environment()
    rank, world = distributed.rank(), distributed.world_size()
    if world > 1 and args.serve:
        raise CircuitAtlasError("--serve cannot be used under torchrun; serve the folder afterwards")
    todo = _broadcast_todo(args, requests, settings, rank, world)
    if rank == 0:
        print(f"{len(requests)} prompts: {len(requests) - len(todo)} already traced, {len(todo)} to trace"
              + (f" on {world} ranks" if world > 1 else ""))
    failures, model = [], None
    if todo:
        from circuit_atlas.replacement import load

        model = load(args.model, args.transcoders, dtype=args.dtype, lazy_encoder=args.lazy_encoder,
                     **rank_placement(args, world))
        _check_targets(args.prompts, todo, model)
        failures = _trace_share(args, model, todo, todo[rank::world], labels, settings, rank == 0)
    if world > 1:
        distributed.shutdown()
    if failures:
        print(f"{len(failures)} prompt(s) failed" + (f" on rank {rank}" if world > 1 else "") + ":")
        for request, message in failures:
            print(f"  line {request.line} ({request.slug}): {message}")
        return 1
    if args.serve and rank == 0:
        from circuit_atlas.cli.serve import serve_folder

        serve_folder(args.out, host="127.0.0.1", port=args.port, open_browser=not args.no_browser,
                     features_dir=args.features, model=model)
    return 0


def _refuse_single_prompt_flags(args: argparse.Namespace) -> None:
    for flag, value in (("--slug", args.slug), ("--targets", args.targets), ("--logit-diff", args.logit_diff)):
        if value:
            raise CircuitAtlasError(f"{flag} applies to one prompt; with --prompts give "
                                    f"\"{flag[2:].replace('-', '_')}\" on the lines of the file")


def _check_destinations(out: Path, requests: list[PromptRequest], check_destination) -> None:
    problems = []
    for request in requests:
        try:
            check_destination(out, request.slug)
        except CircuitAtlasError as exc:
            problems.append(f"line {request.line}: {exc}")
    if problems:
        raise CircuitAtlasError("cannot write every graph:\n  " + "\n  ".join(problems[:20]))


def _settings_record(args: argparse.Namespace) -> dict[str, Any]:
    """The options that change a traced graph or its bundle."""
    return {"model": args.model, "transcoders": args.transcoders, "dtype": args.dtype,
            "max_n_logits": args.max_n_logits, "desired_logit_prob": args.desired_logit_prob,
            "max_feature_nodes": args.max_feature_nodes, "node_threshold": args.node_threshold,
            "edge_threshold": args.edge_threshold,
            "features": str(args.features) if args.features else None}


def _record(request: PromptRequest, settings: dict[str, Any]) -> dict[str, Any]:
    return {"request": request.record(), "settings": settings}


def is_done(out: Path, request: PromptRequest, settings: dict[str, Any]) -> bool:
    """The bundle of `request` is complete and was traced from the same request and settings."""
    from circuit_atlas.graph.bundle import read_bundle_info
    from circuit_atlas.io.untrusted import UntrustedJsonError, read_json

    folder = Path(out).expanduser() / request.slug
    if read_bundle_info(folder) is None:
        return False
    try:
        stored = read_json(folder / REQUEST_FILE, max_bytes=16 * 1024 * 1024)
    except (OSError, UntrustedJsonError):
        return False
    return stored == json.loads(json.dumps(_record(request, settings)))


def _broadcast_todo(args, requests, settings, rank: int, world: int) -> list[PromptRequest]:
    """The lines to trace, decided by rank 0 (stale request records removed first, so a record
    on disk always means "done in this run or before")."""
    todo_lines = None
    if rank == 0:
        todo = [r for r in requests if args.force or not is_done(args.out, r, settings)]
        for request in todo:
            (Path(args.out).expanduser() / request.slug / REQUEST_FILE).unlink(missing_ok=True)
        todo_lines = [r.line for r in todo]
    if world > 1:
        import torch.distributed as dist

        box = [todo_lines]
        dist.broadcast_object_list(box, src=0)
        todo_lines = box[0]
    wanted = set(todo_lines)
    return [r for r in requests if r.line in wanted]


def _targets(request: PromptRequest):
    from circuit_atlas.attribution import LogitDifference

    if request.logit_diff is not None:
        return [LogitDifference(*request.logit_diff)]
    return request.targets


def _check_targets(path, todo: list[PromptRequest], model) -> None:
    """Targets must be single tokens of this tokenizer; all bad lines are reported at once."""
    from circuit_atlas.attribution.targets import resolve_token

    problems = []
    vocab = int(model.lm.vocab_size)
    for request in todo:
        tokens = (request.targets or []) + (request.logit_diff or [])
        if request.token_ids is not None and max(request.token_ids) >= vocab:
            problems.append(f"line {request.line}: token id {max(request.token_ids)} is outside "
                            f"the vocabulary [0, {vocab})")
        for token in tokens:
            try:
                resolve_token(model.tokenizer, token, vocab)
            except CircuitAtlasError as exc:
                problems.append(f"line {request.line}: {exc}")
    if problems:
        raise CircuitAtlasError(f"--prompts {path}: bad targets on {len(problems)} line(s):\n  "
                                + "\n  ".join(problems[:20]))


def _trace_share(args, model, todo, mine, labels, settings, show_bar: bool) -> list:
    """Trace this rank's lines; returns (request, message) of the ones that failed."""
    from circuit_atlas.attribution import attribute
    from circuit_atlas.graph import graph_scores
    from circuit_atlas.io.atomic import atomic_write_json
    from circuit_atlas.graph.bundle import write_graph_bundle

    failures = []
    bar = _OverallProgress(args.out, todo, show_bar)
    with bar:
        for request in mine:
            started = time.perf_counter()
            try:
                graph = attribute(
                    model, request.prompt if request.prompt is not None else request.token_ids,
                    targets=_targets(request), max_n_logits=args.max_n_logits,
                    desired_logit_prob=args.desired_logit_prob,
                    max_feature_nodes=args.max_feature_nodes, batch_size=args.batch_size,
                    progress=False)
                scores = graph_scores(graph)
                folder = write_graph_bundle(graph, args.out, request.slug, args.node_threshold,
                                            args.edge_threshold, labels=labels, scores=scores)
            except CircuitAtlasError as exc:
                failures.append((request, str(exc)))
                bar.write(f"line {request.line} ({request.slug}): failed: {exc}")
                continue
            atomic_write_json(folder / REQUEST_FILE, _record(request, settings))
            bar.write(f"line {request.line} {request.slug}: {graph.n_selected} feature nodes, "
                      f"replacement {scores.replacement:.3f}, completeness {scores.completeness:.3f}, "
                      f"top {graph.logit_tokens[0]!r} p={float(graph.logit_probabilities[0]):.3f} "
                      f"({time.perf_counter() - started:.1f} s)")
            bar.advance()
    return failures


class _OverallProgress:
    """A bar over every line still to do, on rank 0: its own lines as they finish, and the other
    ranks' by polling their request records (at most every POLL_SECONDS)."""

    def __init__(self, out, todo: list[PromptRequest], enabled: bool) -> None:
        self.out, self.todo = Path(out).expanduser(), todo
        self.bar, self.last_poll = None, 0.0
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=len(todo), unit="graph", desc="trace", dynamic_ncols=True)

    def advance(self) -> None:
        if self.bar is None:
            return
        now = time.monotonic()
        if now - self.last_poll >= POLL_SECONDS or self.bar.n + 1 >= self.bar.total:
            self.last_poll = now
            self.bar.n = sum((self.out / r.slug / REQUEST_FILE).is_file() for r in self.todo)
            self.bar.refresh()
        else:
            self.bar.update(1)

    def write(self, text: str) -> None:
        if self.bar is None:
            print(text)
        else:
            self.bar.write(text)

    def __enter__(self) -> "_OverallProgress":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
