"""Steering from the explorer: turn a web request about graph nodes into interventions, run them
on the model the server holds, and answer with top tokens and generated text before/after.

Why a separate module: the HTTP layer stays thin, and everything a client can get wrong beyond
the body's shape (unknown or non-feature nodes, too many tokens for the model, a graph traced with
another model) is checked here, before the model is touched, with a message that names the
offending field. The body's shape and value ranges are `schemas.SteerBody`::

    {"interventions": [{"nodes": ["3_1204_5", ...],   # one node, or a supernode's members
                        "op": "ablate" | "scale" | "set",
                        "value": 2.0,                    # scale/set only: factor or activation
                        "positions": "node" | "all" | "from_node",
                        "name": "Texas"}],               # optional, for display
     "mode": "free" | "constrained", "freeze_attention": false,
     "max_new_tokens": 16, "temperature": 0, "top_p": 1, "seed": 0, "top_k": 10}

Positions: ``node`` is each node's own position; ``all`` every position, generated ones
included; ``from_node`` the node's position and everything after it, generated tokens included
(an open-ended range).

The steerer sees every graph through one interface (`graphs.ServedGraph`): `steerable(model)`
checks it against the held model and returns its token ids and feature coordinates
(`graphs.Steerable`), or refuses with the reason. Graphs that exist only as a graph-JSON file are
checked by `json_graph.adapt`, which recovers their token ids and refuses files that belong to
another model; when the file cannot prove it was traced with the loaded transcoders, the status
and every response carry a ``warning``.

The model is used by one request at a time (one lock); requests run in a worker thread, so the
rest of the API answers while a model call is in progress. At most ``max_pending`` requests wait
for the lock; more are refused with 503 instead of piling up.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import ValidationError

from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.interventions import Intervention, generate, intervene
from circuit_atlas.io.untrusted import json_safe
from circuit_atlas.server.graphs import NotSteerable, ServedGraph, Steerable
from circuit_atlas.server.schemas import (
    MAX_NEW_TOKENS,
    MAX_TOP_K,
    Mode,
    Op,
    Positions,
    SteerBody,
    describe_errors,
)

MAX_CHANGED_FEATURES = 20
MAX_CACHED_CHECKS = 4
BUSY_WAIT_S = 2.0  # how long a status request waits for the model lock to check a JSON graph
START_HINT = (
    "start the explorer with the model and transcoders the graph was traced with: "
    "circuit-atlas serve DIR --model MODEL --transcoders TRANSCODERS"
)


class SteerUnavailable(CircuitAtlasError):
    """Steering this graph is impossible as the server stands (no model, other model, no native
    graph): the request was fine, the server's state is not (HTTP 409)."""


class SteerBusy(CircuitAtlasError):
    """Too many steering requests are already waiting for the model (HTTP 503)."""


class SteerRequestError(CircuitAtlasError):
    """A malformed steering request (HTTP 400)."""


# ---------------------------------------------------------------------- request parsing
@dataclass(frozen=True)
class SteerRow:
    """One row of the Steer panel: an operation on one node or on a supernode's members."""

    nodes: tuple[str, ...]
    op: Op
    value: float | None
    positions: Positions
    name: str | None


@dataclass(frozen=True)
class SteerRequest:
    rows: tuple[SteerRow, ...]
    mode: Mode
    freeze_attention: bool
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    top_k: int


def parse_request(body: Any) -> SteerRequest:
    """A steering request from a `schemas.SteerBody` (what the route receives, already
    validated) or from a plain dict (checked against it here; unknown keys are refused)."""
    if not isinstance(body, SteerBody):
        if not isinstance(body, dict):
            raise SteerRequestError("the request body must be a JSON object")
        try:
            body = SteerBody.model_validate(body)
        except ValidationError as exc:
            raise SteerRequestError(describe_errors(exc.errors(), skip=())) from None
    rows = tuple(SteerRow(tuple(dict.fromkeys(row.nodes)), row.op, getattr(row, "value", None),
                          row.positions, row.name) for row in body.interventions)
    return SteerRequest(rows=rows, mode=body.mode, freeze_attention=body.freeze_attention,
                        max_new_tokens=body.max_new_tokens, temperature=body.temperature,
                        top_p=body.top_p, seed=body.seed, top_k=body.top_k)


# ---------------------------------------------------------------------- nodes -> interventions
def row_interventions(graph: Steerable, row: SteerRow, where: str) -> list[Intervention]:
    """The `Intervention`s of one row: each member node's (layer, position, feature).

    Members that share a layer and feature collapse into one intervention when their position
    ranges would overlap (``all``, ``from_node``), since the interventions API refuses two
    interventions on the same feature and position.
    """
    coords = [node_coords(graph, node_id, where) for node_id in row.nodes]
    kwargs: dict[str, Any] = {"ablate": True}
    if row.op == "set":
        kwargs = {"value": row.value}
    elif row.op == "scale":
        kwargs = {"scale": row.value}
    if row.positions == "node":
        return [Intervention(layer, pos, feat, **kwargs) for layer, pos, feat in coords]
    first: dict[tuple[int, int], int] = {}
    for layer, pos, feat in coords:
        key = (layer, feat)
        first[key] = min(pos, first.get(key, pos))
    out = []
    for (layer, feat), pos in first.items():
        position = None if row.positions == "all" else slice(pos, None)
        out.append(Intervention(layer, position, feat, **kwargs))
    return out


def node_coords(graph: Steerable, node_id: str, where: str) -> tuple[int, int, int]:
    """(layer, position, feature) of a feature node; other nodes cannot be intervened on."""
    kind = graph.node_kind(node_id)
    if kind is None:
        raise SteerRequestError(f"{where}: the graph has no node {node_id!r}")
    if kind != "feature":
        raise SteerRequestError(
            f"{where}: node {node_id!r} is a {kind} node; only feature nodes can be steered"
        )
    return graph.feature_coords(node_id)


# ---------------------------------------------------------------------- model identity
def model_info(model: Any) -> dict[str, Any]:
    scan = model.transcoders.scan
    return {
        "name": model.lm.name,
        "transcoders": scan if isinstance(scan, str) or scan is None else list(scan),
        "n_layers": int(model.n_layers),
        "n_features": int(model.transcoders.n_features),
        "max_positions": model.lm.max_positions,
    }


# ---------------------------------------------------------------------- the runner
class Steerer:
    """Holds the loaded `ReplacementModel` (or None) and runs steering requests on it, one at a time."""

    def __init__(self, model: Any | None, max_pending: int = 4) -> None:
        self.model = model
        self.max_pending = max_pending
        # graph id -> (served graph, its Steerable or refusal); the served object is held so
        # that the identity check below can never match a recycled object.
        self._checked: dict[str, tuple[ServedGraph, Steerable | NotSteerable]] = {}
        self._lock = threading.Lock()
        self._cache_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._pending = 0

    @property
    def model_lock(self) -> threading.Lock:
        """Held while the model runs; other users of the model (the attention panel) take it too."""
        return self._lock

    @property
    def available(self) -> bool:
        return self.model is not None

    def info(self) -> dict[str, Any]:
        """What the web app needs to show or hide the Steer panel."""
        return {
            "available": self.available,
            "model": model_info(self.model) if self.model is not None else None,
            "max_new_tokens": MAX_NEW_TOKENS,
            "max_top_k": MAX_TOP_K,
            "reason": None if self.available else f"the server holds no model; {START_HINT}",
        }

    def graph_status(self, graph: ServedGraph | None, graph_id: str) -> dict[str, Any]:
        """Whether this graph can be steered, and why not (shown next to a disabled panel).

        ``graph``: the served graph, or None when there is no model to check it with.
        ``warning`` is set when steering is allowed but the files cannot show the graph was
        traced with the loaded transcoders.
        """
        resolved, reason = self.resolve(graph, graph_id)
        return {
            **self.info(),
            "available": reason is None,
            "reason": reason,
            "warning": None if resolved is None else resolved.warning,
            "source": None if graph is None else graph.source,
            "tokens_from": None if resolved is None else resolved.tokens_from,
        }

    def refusal(self, graph: ServedGraph | None, graph_id: str) -> str | None:
        return self.resolve(graph, graph_id)[1]

    def resolve(self, graph: ServedGraph | None, graph_id: str, *,
                wait: bool = False) -> tuple[Steerable | None, str | None]:
        """(what to steer; None, or why this graph cannot be steered).

        Checking a graph that needs the tokenizer (a JSON file) runs under the model lock the
        first time; a status request (`wait=False`) does not queue behind a running steer for it
        but says the model is busy."""
        if self.model is None:
            return None, f"steering needs a model, and the server holds none; {START_HINT}"
        if graph is None:
            return None, f"graph {graph_id!r} cannot be checked without a model; {START_HINT}"
        checked = self._check(graph, wait=wait)
        if isinstance(checked, NotSteerable):
            return None, f"{graph.label} cannot be steered: {checked}; {START_HINT}"
        return checked, None

    def _check(self, graph: ServedGraph, *, wait: bool) -> Steerable | NotSteerable:
        """`graph.steerable(model)`, cached per graph id while the explorer hands out the same
        served object (it builds a new one when the files change)."""
        with self._cache_lock:
            cached = self._checked.pop(graph.graph_id, None)
            if cached is not None and cached[0] is graph:
                self._checked[graph.graph_id] = cached  # most recent last
                return cached[1]
        if not graph.checks_with_tokenizer:
            checked = self._steerable(graph)
        else:
            # Under the model lock: tokenising while a steering run decodes tokens on another
            # thread can trip the fast tokenizer's "Already borrowed" guard.
            if not self._lock.acquire(timeout=-1 if wait else BUSY_WAIT_S):
                return NotSteerable("the model is busy with another steering run; this graph is "
                                    "checked when it is free (try again in a moment)")  # not cached
            try:
                checked = self._steerable(graph)
            finally:
                self._lock.release()
        with self._cache_lock:
            self._checked[graph.graph_id] = (graph, checked)
            while len(self._checked) > MAX_CACHED_CHECKS:  # JSON documents can be large
                self._checked.pop(next(iter(self._checked)))
        return checked

    def _steerable(self, graph: ServedGraph) -> Steerable | NotSteerable:
        try:
            return graph.steerable(self.model)
        except NotSteerable as exc:
            return exc
        except (ValueError, TypeError, KeyError, OverflowError, RuntimeError) as exc:
            # a malformed file must be a refusal with a reason, never a server error
            return NotSteerable(f"the file is not a readable graph-JSON document ({exc})")

    def steer(self, graph: ServedGraph | None, graph_id: str, body: Any) -> dict[str, Any]:
        """Validate ``body`` against ``graph`` and run it (blocking; call from a worker thread)."""
        request = parse_request(body)
        with _Slot(self):  # counted before anything waits on the model lock
            target, reason = self.resolve(graph, graph_id, wait=True)
            if reason is not None:
                raise SteerUnavailable(reason)
            interventions = []
            for i, row in enumerate(request.rows):
                interventions.extend(row_interventions(target, row, f"interventions[{i}]"))
            start = time.perf_counter()
            with self._lock:
                waited = time.perf_counter() - start
                result = self.compute(target.input_ids, interventions, request)
        result["graph_id"] = graph_id
        result["warning"] = target.warning
        result["rows"] = [
            {"nodes": list(r.nodes), "op": r.op, "value": r.value, "positions": r.positions,
             "name": r.name}
            for r in request.rows
        ]
        result["timing"] = {"queued_s": waited, "run_s": time.perf_counter() - start - waited}
        return json_safe(result)

    def compute(self, input_ids: torch.Tensor, interventions: list[Intervention],
                request: SteerRequest) -> dict[str, Any]:
        """`intervene` on the prompt and `generate` from it; the model lock is held."""
        with torch.no_grad():
            result = intervene(
                self.model, input_ids, interventions, mode=request.mode,
                freeze_attention=request.freeze_attention, top_k=request.top_k,
            )
            generation = None
            if request.max_new_tokens > 0:
                generation = generate(
                    self.model, input_ids, interventions, request.max_new_tokens,
                    temperature=request.temperature, top_p=request.top_p, seed=request.seed,
                )
        return {
            "intervention": result.to_dict(max_changes=MAX_CHANGED_FEATURES),
            "generation": None if generation is None else generation.to_dict(),
        }


class _Slot:
    """Counts requests waiting for or holding the model; refuses one past ``max_pending``."""

    def __init__(self, steerer: Steerer) -> None:
        self.steerer = steerer

    def __enter__(self) -> None:
        s = self.steerer
        with s._count_lock:
            if s._pending >= s.max_pending:
                raise SteerBusy(
                    f"the model is busy with {s._pending} steering request(s); try again shortly"
                )
            s._pending += 1

    def __exit__(self, *exc: object) -> None:
        with self.steerer._count_lock:
            self.steerer._pending -= 1

