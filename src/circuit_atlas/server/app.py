"""The FastAPI application: JSON API under ``/api`` plus the static web app.

The request and response bodies are the pydantic models of `schemas.py`, so FastAPI validates
every request and documents every answer in ``/openapi.json`` (the contract the web app and
`tests/server/test_contract.py` check). Every error a client can cause is answered with a 4xx
and ``{"detail": message}``, the message naming the field or file at fault (without the data
folder's absolute path); unsupported methods answer 405 with an ``Allow`` header; unexpected
failures give a 500 with a one-line message (logged server-side), never a traceback.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from circuit_atlas._version import __version__
from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.io.untrusted import printable
from circuit_atlas.server import schemas as s
from circuit_atlas.server.annotations import AnnotationBusy, AnnotationFileError
from circuit_atlas.server.attention import AttentionService, AttentionUnavailable
from circuit_atlas.server.catalog import GraphNotFound, GraphUnreadable
from circuit_atlas.server.compare import GraphAnalyses, NativeGraphNeeded
from circuit_atlas.server.compare_schemas import Comparison, SupernodeSuggestions
from circuit_atlas.server.explorer import Explorer
from circuit_atlas.server.features import FeatureDataError, FeatureProvider
from circuit_atlas.server.graphs import NodeNotFound, ScoresUnavailable, ServedGraph
from circuit_atlas.server.hosts import AllowedHostsMiddleware
from circuit_atlas.server.limits import DEFAULT_MAX_BODY_BYTES, RequestLimitsMiddleware
from circuit_atlas.server.responses import SafeJSONResponse
from circuit_atlas.server.steer import SteerBusy, Steerer, SteerUnavailable

log = logging.getLogger("circuit_atlas.server")

LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]
MAX_NODE_IDS = s.MAX_NODE_IDS
MAX_GRAPH_ID_CHARS = 256

# What each 4xx means; every operation declares the ones it can give (`_answers`).
ANSWERS = {
    400: "a parameter or body field is invalid (the message names it), or the Host header is "
         "not a loopback name",
    404: "no graph (or node) with this id",
    409: "the request is fine but the server cannot do it as it stands (no model to steer with, "
         "a graph of another model, scores, comparisons or suggestions of a JSON-only graph, "
         "attention explanations that are neither stored nor computable: the message says how to "
         "precompute them)",
    413: "the request body is larger than the server accepts",
    415: "the request body is not sent as application/json",
    422: "a file in the data folder (graph, annotations, feature data) cannot be read",
    503: "busy: too many steering requests are waiting, or another process holds the "
         "annotations lock",
}


def _answers(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": s.ErrorBody, "description": ANSWERS[code]} for code in (400, *codes)}


def web_dir() -> Path:
    """The folder of static web files shipped inside the package."""
    return Path(str(resources.files("circuit_atlas") / "web"))


def _status_for(exc: CircuitAtlasError) -> int:
    if isinstance(exc, (GraphNotFound, NodeNotFound)):
        return 404
    if isinstance(exc, (ScoresUnavailable, SteerUnavailable, AttentionUnavailable,
                        NativeGraphNeeded)):
        return 409
    if isinstance(exc, (SteerBusy, AnnotationBusy)):
        return 503
    if isinstance(exc, (GraphUnreadable, AnnotationFileError, FeatureDataError)):
        return 422
    return 400


def _body_error(exc: HTTPException) -> str:
    """FastAPI answers a body it cannot parse with a bare "There was an error parsing the body";
    say why (the JSON error is the exception's cause)."""
    cause = exc.__cause__
    if isinstance(cause, RecursionError):
        return "the request body is not valid JSON: it is nested too deeply"
    if isinstance(cause, (ValueError, UnicodeDecodeError)):
        return f"the request body is not valid JSON: {cause}"
    return str(exc.detail)


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
        description="Browse attribution graphs, annotate them, score pinned subgraphs and steer "
                    "their features. Every 4xx answer is `{\"detail\": message}`.",
    )
    app.state.explorer = explorer
    app.state.steerer = steerer
    app.add_middleware(RequestLimitsMiddleware, max_body_bytes=max_body_bytes)
    if allowed_hosts:
        app.add_middleware(AllowedHostsMiddleware, allowed_hosts=allowed_hosts)

    def answer(status: int, detail: str, headers: dict[str, str] | None = None) -> SafeJSONResponse:
        return SafeJSONResponse({"detail": explorer.shown(printable(detail))}, status_code=status,
                                headers=headers)

    @app.exception_handler(CircuitAtlasError)
    async def _user_error(request: Request, exc: CircuitAtlasError) -> SafeJSONResponse:
        return answer(_status_for(exc), str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> SafeJSONResponse:
        return answer(400, s.describe_errors(list(exc.errors())))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code in (204, 304):
            return Response(status_code=exc.status_code, headers=exc.headers)
        return answer(exc.status_code, _body_error(exc), dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> SafeJSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return answer(500, f"internal error: {type(exc).__name__}: {exc}")

    _add_api_routes(app, explorer)
    _add_steer_routes(app, explorer, steerer)
    _add_analysis_routes(app, GraphAnalyses(explorer, model))
    _add_attention_routes(app, AttentionService(explorer, model, steerer.model_lock))
    _add_static_routes(app)
    return app


GraphId = Annotated[str, PathParam(min_length=1, max_length=MAX_GRAPH_ID_CHARS,
                                   description="a graph id from GET /api/graphs")]
OtherGraphId = Annotated[str, PathParam(min_length=1, max_length=MAX_GRAPH_ID_CHARS,
                                        description="the graph to compare with (B)")]
NodeIdParam = Annotated[str, PathParam(min_length=1, max_length=s.MAX_ID_CHARS,
                                       description="a node id of the graph")]
Threshold = Annotated[float | None, Query(ge=0.0, le=1.0, allow_inf_nan=False)]


def _add_api_routes(app: FastAPI, explorer: Explorer) -> None:
    json = SafeJSONResponse

    @app.get("/api/health", tags=["meta"], response_model=s.Health, response_class=json,
             responses=_answers())
    def health() -> dict[str, Any]:
        return {"ok": True, "version": __version__}

    @app.get("/api/graphs", tags=["graphs"], summary="List the graphs in the data folder",
             response_model=s.GraphList, response_class=json, responses=_answers())
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
        response_model=None,
        responses={200: {"model": s.GraphView, "description": "the pruned graph"},
                   **_answers(404, 422)},
    )
    def get_graph(
        graph_id: GraphId,
        node_threshold: Threshold = None,
        edge_threshold: Threshold = None,
    ) -> Response:
        # The body is serialised once per view and cached (`Explorer.view`); the nodes of
        # JSON-only graphs were checked against `GraphNode` when the file was read.
        view = explorer.view(graph_id, node_threshold, edge_threshold)
        return Response(view.body, media_type="application/json")

    @app.get(
        "/api/graphs/{graph_id}/nodes/{node_id}",
        tags=["graphs"],
        summary="A node's incoming and outgoing edges, sorted by |weight|, with labels",
        response_model=s.Neighbourhood, response_class=json, responses=_answers(404, 422),
    )
    def get_node(
        graph_id: GraphId,
        node_id: NodeIdParam,
        node_threshold: Threshold = None,
        edge_threshold: Threshold = None,
        scope: Literal["view", "full"] = "view",
        limit: Annotated[int | None, Query(ge=1, le=5000)] = None,
    ) -> dict[str, Any]:
        return explorer.node(
            graph_id,
            node_id,
            node_threshold=node_threshold,
            edge_threshold=edge_threshold,
            scope=scope,
            limit=limit,
        )

    @app.get("/api/graphs/{graph_id}/annotations", tags=["annotations"],
             response_model=s.Annotations, response_class=json, responses=_answers(404, 422))
    def get_annotations(graph_id: GraphId) -> dict[str, Any]:
        return explorer.read_annotations(graph_id)

    @app.put(
        "/api/graphs/{graph_id}/annotations",
        tags=["annotations"],
        summary="Merge a patch into the annotations (null or '' deletes a key)",
        response_model=s.Annotations, response_class=json,
        responses=_answers(404, 413, 415, 422, 503),
    )
    async def put_annotations(graph_id: GraphId, patch: s.AnnotationPatch) -> dict[str, Any]:
        return await run_in_threadpool(explorer.patch_annotations, graph_id, patch)

    @app.post(
        "/api/graphs/{graph_id}/scores",
        tags=["graphs"],
        summary="Replacement and completeness of the graph, or of the subgraph of the given "
                "nodes (no body, or no node_ids: the whole graph)",
        response_model=s.Scores, response_class=json,
        responses=_answers(404, 409, 413, 415, 422),
    )
    async def post_scores(graph_id: GraphId,
                          body: s.OptionalNodeIds | None = None) -> dict[str, Any]:
        node_ids = None if body is None else body.node_ids
        return await run_in_threadpool(explorer.scores, graph_id, node_ids)

    @app.post(
        "/api/graphs/{graph_id}/subgraph",
        tags=["graphs"],
        summary="The given nodes and every edge among them, from the unpruned graph",
        response_model=s.Subgraph, response_class=json,
        responses=_answers(404, 413, 415, 422),
    )
    async def post_subgraph(graph_id: GraphId, body: s.NodeIds) -> dict[str, Any]:
        return await run_in_threadpool(explorer.subgraph, graph_id, body.node_ids)

    @app.get("/api/features/{layer}/{index}", tags=["features"], response_model=s.Feature,
             response_class=json, responses=_answers(422))
    def get_feature(
        layer: Annotated[int, PathParam(ge=0, le=s.MAX_FEATURE_COORD)],
        index: Annotated[int, PathParam(ge=0, le=s.MAX_FEATURE_COORD)],
    ) -> dict[str, Any]:
        record = explorer.feature(layer, index)
        return {
            "available": explorer.features is not None,
            "layer": layer,
            "index": index,
            "feature": record,
        }


def _add_steer_routes(app: FastAPI, explorer: Explorer, steerer: Steerer) -> None:
    json = SafeJSONResponse

    def steerable_graph(graph_id: str) -> ServedGraph | None:
        """The served graph (404 for unknown ids); not loaded when there is no model to use it."""
        if not steerer.available:
            explorer.catalog.get(graph_id)
            return None
        return explorer.served(graph_id)

    @app.get("/api/steer", tags=["steer"], summary="Whether the server holds a model to steer",
             response_model=s.SteerInfo, response_class=json, responses=_answers())
    def steer_info() -> dict[str, Any]:
        return steerer.info()

    @app.get(
        "/api/graphs/{graph_id}/steer",
        tags=["steer"],
        summary="Whether this graph can be steered with the loaded model, and why not",
        response_model=s.SteerStatus, response_class=json, responses=_answers(404, 422),
    )
    def steer_status(graph_id: GraphId) -> dict[str, Any]:
        return steerer.graph_status(steerable_graph(graph_id), graph_id)

    @app.post(
        "/api/graphs/{graph_id}/steer",
        tags=["steer"],
        summary="Ablate, scale or set feature nodes; top tokens and generated text before/after",
        response_model=s.SteerResult, response_class=json,
        responses=_answers(404, 409, 413, 415, 422, 503),
    )
    async def post_steer(graph_id: GraphId, body: s.SteerBody) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            return steerer.steer(steerable_graph(graph_id), graph_id, body)

        return await run_in_threadpool(work)


def _add_analysis_routes(app: FastAPI, analyses: GraphAnalyses) -> None:
    """The diff view's comparison and the suggestions panel's groups (`server/compare.py`)."""
    json = SafeJSONResponse

    @app.get(
        "/api/compare/{graph_id}/{other_graph_id}",
        tags=["analyses"],
        summary="Compare two native graphs (A, B): aligned nodes, what appears, disappears or "
                "changes most in influence, and the effect on the target",
        response_model=Comparison, response_class=json, responses=_answers(404, 409, 422),
    )
    async def get_comparison(graph_id: GraphId, other_graph_id: OtherGraphId,
                             node_threshold: Threshold = None,
                             edge_threshold: Threshold = None) -> dict[str, Any]:
        return await run_in_threadpool(analyses.compare, graph_id, other_graph_id,
                                       node_threshold, edge_threshold)

    @app.get(
        "/api/graphs/{graph_id}/supernode-suggestions",
        tags=["analyses"],
        summary="Groups of the view's feature nodes that mean and do the same thing, named from "
                "their labels (uses the served feature store when it is a circuit-atlas store)",
        response_model=SupernodeSuggestions, response_class=json, responses=_answers(404, 409, 422),
    )
    async def get_suggestions(
        graph_id: GraphId,
        node_threshold: Threshold = None,
        edge_threshold: Threshold = None,
        min_similarity: Annotated[float, Query(ge=0.0, le=1.0, allow_inf_nan=False)] = 0.6,
    ) -> dict[str, Any]:
        return await run_in_threadpool(analyses.suggestions, graph_id, node_threshold,
                                       edge_threshold, min_similarity)
EdgeEnd = Annotated[str, PathParam(min_length=1, max_length=s.MAX_ID_CHARS,
                                    description="a node id of the graph (the edge's source or target)")]


def _add_attention_routes(app: FastAPI, attention: AttentionService) -> None:
    json = SafeJSONResponse
    tags = ["attention"]

    @app.get("/api/graphs/{graph_id}/attention", tags=tags,
             summary="Whether the attention panel can answer for this graph, and its stored edges",
             response_model=s.AttentionStatus, response_class=json, responses=_answers(404, 422))
    def attention_status(graph_id: GraphId) -> dict[str, Any]:
        return attention.status(graph_id)

    @app.get("/api/graphs/{graph_id}/attention/{source}/{target}", tags=tags,
             summary="The heads carrying the edge source -> target (stored, or computed with the "
                     "server's model)",
             response_model=s.EdgeHeads, response_class=json, responses=_answers(404, 409, 422))
    def edge_heads(graph_id: GraphId, source: EdgeEnd, target: EdgeEnd) -> dict[str, Any]:
        return attention.edge(graph_id, source, target)

    @app.get("/api/graphs/{graph_id}/attention/{source}/{target}/{layer}/{head}", tags=tags,
             summary="Why head layer.head attends where it carries the edge: its top query-side x "
                     "key-side term pairs",
             response_model=s.HeadExplanation, response_class=json,
             responses=_answers(404, 409, 422))
    def head_explanation(
        graph_id: GraphId, source: EdgeEnd, target: EdgeEnd,
        layer: Annotated[int, PathParam(ge=0, le=s.MAX_FEATURE_COORD)],
        head: Annotated[int, PathParam(ge=0, le=s.MAX_FEATURE_COORD)],
        top: Annotated[int, Query(ge=1, le=s.MAX_TOP_PAIRS)] = 10,
    ) -> dict[str, Any]:
        return attention.head(graph_id, source, target, layer, head, top)


def _add_static_routes(app: FastAPI) -> None:
    root = web_dir()

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(root / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=root), name="static")
