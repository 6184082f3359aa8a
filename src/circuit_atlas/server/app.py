"""The FastAPI application: JSON API under ``/api`` plus the static web app.

Every error a client can cause is answered with a 4xx and ``{"detail": message}``; unexpected
failures give a 500 with a one-line message (logged server-side), never a traceback.
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from circuit_atlas._version import __version__
from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.server.catalog import GraphNotFound, GraphUnreadable
from circuit_atlas.server.explorer import Explorer
from circuit_atlas.server.features import FeatureProvider
from circuit_atlas.server.graphs import NodeNotFound, ScoresUnavailable, ServedGraph
from circuit_atlas.server.hosts import AllowedHostsMiddleware
from circuit_atlas.server.limits import DEFAULT_MAX_BODY_BYTES, RequestLimitsMiddleware
from circuit_atlas.server.steer import (
    MAX_NEW_TOKENS,
    MODES,
    OPS,
    POSITIONS,
    SteerBusy,
    Steerer,
    SteerUnavailable,
)

log = logging.getLogger("circuit_atlas.server")

LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]
MAX_NODE_IDS = 5000


def web_dir() -> Path:
    """The folder of static web files shipped inside the package."""
    return Path(str(resources.files("circuit_atlas") / "web"))


def _status_for(exc: CircuitAtlasError) -> int:
    if isinstance(exc, (GraphNotFound, NodeNotFound)):
        return 404
    if isinstance(exc, (ScoresUnavailable, SteerUnavailable)):
        return 409
    if isinstance(exc, SteerBusy):
        return 503
    if isinstance(exc, GraphUnreadable):
        return 422
    return 400


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        raise CircuitAtlasError("the request needs a JSON body")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CircuitAtlasError(f"the request body is not valid JSON: {exc}") from exc


_NODE_IDS_BODY = {
    "requestBody": {
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"node_ids": {"type": "array", "items": {"type": "string"}}},
                }
            }
        }
    }
}


def _node_ids(body: Any, *, required: bool) -> list[str] | None:
    """Validate a ``{"node_ids": [...]}`` body."""
    if not isinstance(body, dict):
        raise CircuitAtlasError("the request body must be a JSON object")
    node_ids = body.get("node_ids")
    if node_ids is None and not required:
        return None
    if (
        not isinstance(node_ids, list)
        or len(node_ids) > MAX_NODE_IDS
        or not all(isinstance(n, str) and 0 < len(n) <= 200 for n in node_ids)
    ):
        raise CircuitAtlasError(f"node_ids must be a list of at most {MAX_NODE_IDS} node-id strings")
    return node_ids


def create_app(
    data_dir: str | Path,
    *,
    features: FeatureProvider | None = None,
    allowed_hosts: list[str] | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    model: Any | None = None,
) -> FastAPI:
    """Build the explorer app for ``data_dir``.

    ``allowed_hosts``: when set, requests with another ``Host`` header are refused, which stops
    DNS-rebinding pages from reading a server bound to 127.0.0.1 (the CLI passes the loopback
    names). ``features``: optional provider for the feature panel. ``model``: a loaded
    `ReplacementModel` for the steering endpoints (without one they answer 409).
    """
    explorer = Explorer(data_dir, features)
    steerer = Steerer(model)
    app = FastAPI(
        title="circuit-atlas explorer",
        version=__version__,
        description="Browse attribution graphs, annotate them and score pinned subgraphs.",
    )
    app.state.explorer = explorer
    app.state.steerer = steerer
    app.add_middleware(RequestLimitsMiddleware, max_body_bytes=max_body_bytes)
    if allowed_hosts:
        app.add_middleware(AllowedHostsMiddleware, allowed_hosts=allowed_hosts)

    @app.exception_handler(CircuitAtlasError)
    async def _user_error(request: Request, exc: CircuitAtlasError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=_status_for(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"detail": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500
        )

    _add_api_routes(app, explorer)
    _add_steer_routes(app, explorer, steerer)
    _add_static_routes(app)
    return app


def _add_api_routes(app: FastAPI, explorer: Explorer) -> None:
    thresholds = {
        "node_threshold": Query(None, ge=0.0, le=1.0, description="cumulative node influence kept"),
        "edge_threshold": Query(None, ge=0.0, le=1.0, description="cumulative edge score kept"),
    }

    @app.get("/api/health", tags=["meta"])
    def health() -> dict[str, Any]:
        return {"ok": True, "version": __version__}

    @app.get("/api/graphs", tags=["graphs"], summary="List the graphs in the data folder")
    def list_graphs() -> dict[str, Any]:
        return {
            "graphs": explorer.list_graphs(),
            "features": explorer.features is not None,
            "steer": app.state.steerer.available,
        }

    @app.get(
        "/api/graphs/{graph_id}",
        tags=["graphs"],
        summary="One graph, pruned at the given thresholds (graph-JSON format plus 'view')",
    )
    def get_graph(
        graph_id: str,
        node_threshold: float | None = thresholds["node_threshold"],
        edge_threshold: float | None = thresholds["edge_threshold"],
    ) -> Response:
        view = explorer.view(graph_id, node_threshold, edge_threshold)
        return Response(view.body, media_type="application/json")

    @app.get(
        "/api/graphs/{graph_id}/nodes/{node_id}",
        tags=["graphs"],
        summary="A node's incoming and outgoing edges, sorted by |weight|, with labels",
    )
    def get_node(
        graph_id: str,
        node_id: str,
        node_threshold: float | None = thresholds["node_threshold"],
        edge_threshold: float | None = thresholds["edge_threshold"],
        scope: str = Query("view", pattern="^(view|full)$"),
        limit: int | None = Query(None, ge=1, le=5000),
    ) -> dict[str, Any]:
        return explorer.node(
            graph_id,
            node_id,
            node_threshold=node_threshold,
            edge_threshold=edge_threshold,
            scope=scope,
            limit=limit,
        )

    @app.get("/api/graphs/{graph_id}/annotations", tags=["annotations"])
    def get_annotations(graph_id: str) -> dict[str, Any]:
        return explorer.read_annotations(graph_id)

    @app.put(
        "/api/graphs/{graph_id}/annotations",
        tags=["annotations"],
        summary="Merge a patch into the annotations (null or '' deletes a key)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "node_labels": {"type": "object"},
                                "feature_labels": {"type": "object"},
                                "supernodes": {"type": "object"},
                                "pinned_sets": {"type": "object"},
                            },
                        }
                    }
                },
            }
        },
    )
    async def put_annotations(graph_id: str, request: Request) -> dict[str, Any]:
        patch = await _json_body(request)
        return await run_in_threadpool(explorer.patch_annotations, graph_id, patch)

    @app.post(
        "/api/graphs/{graph_id}/scores",
        tags=["graphs"],
        summary="Replacement and completeness of the graph or of a subgraph of pinned nodes",
        openapi_extra=_NODE_IDS_BODY,
    )
    async def post_scores(graph_id: str, request: Request) -> dict[str, Any]:
        has_body = request.headers.get("content-length", "0") != "0"
        node_ids = _node_ids(await _json_body(request) if has_body else {}, required=False)
        return await run_in_threadpool(explorer.scores, graph_id, node_ids)

    @app.post(
        "/api/graphs/{graph_id}/subgraph",
        tags=["graphs"],
        summary="The given nodes and every edge among them, from the unpruned graph",
        openapi_extra=_NODE_IDS_BODY,
    )
    async def post_subgraph(graph_id: str, request: Request) -> dict[str, Any]:
        node_ids = _node_ids(await _json_body(request), required=True)
        return await run_in_threadpool(explorer.subgraph, graph_id, node_ids)

    @app.get("/api/features/{layer}/{index}", tags=["features"])
    def get_feature(layer: int, index: int) -> dict[str, Any]:
        if layer < 0 or index < 0:
            raise CircuitAtlasError("layer and index must be non-negative")
        record = explorer.feature(layer, index)
        return {
            "available": explorer.features is not None,
            "layer": layer,
            "index": index,
            "feature": record,
        }


_STEER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["interventions"],
                    "properties": {
                        "interventions": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["nodes", "op"],
                                "properties": {
                                    "nodes": {"type": "array", "items": {"type": "string"}},
                                    "op": {"enum": list(OPS)},
                                    "value": {"type": "number"},
                                    "positions": {"enum": list(POSITIONS)},
                                    "name": {"type": "string"},
                                },
                            },
                        },
                        "mode": {"enum": list(MODES)},
                        "freeze_attention": {"type": "boolean"},
                        "max_new_tokens": {"type": "integer", "minimum": 0, "maximum": MAX_NEW_TOKENS},
                        "temperature": {"type": "number", "minimum": 0},
                        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                        "seed": {"type": "integer", "minimum": 0},
                        "top_k": {"type": "integer", "minimum": 1},
                    },
                }
            }
        },
    }
}


def _add_steer_routes(app: FastAPI, explorer: Explorer, steerer: Steerer) -> None:
    def steerable_graph(graph_id: str) -> ServedGraph | None:
        """The served graph (404 for unknown ids); not loaded when there is no model to use it."""
        if not steerer.available:
            explorer.catalog.get(graph_id)
            return None
        return explorer.served(graph_id)

    @app.get("/api/steer", tags=["steer"], summary="Whether the server holds a model to steer")
    def steer_info() -> dict[str, Any]:
        return steerer.info()

    @app.get(
        "/api/graphs/{graph_id}/steer",
        tags=["steer"],
        summary="Whether this graph can be steered with the loaded model, and why not",
    )
    def steer_status(graph_id: str) -> dict[str, Any]:
        return steerer.graph_status(steerable_graph(graph_id), graph_id)

    @app.post(
        "/api/graphs/{graph_id}/steer",
        tags=["steer"],
        summary="Ablate, scale or set feature nodes; top tokens and generated text before/after",
        openapi_extra=_STEER_BODY,
    )
    async def post_steer(graph_id: str, request: Request) -> dict[str, Any]:
        body = await _json_body(request)

        def work() -> dict[str, Any]:
            return steerer.steer(steerable_graph(graph_id), graph_id, body)

        return await run_in_threadpool(work)


def _add_static_routes(app: FastAPI) -> None:
    root = web_dir()

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(root / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=root), name="static")
