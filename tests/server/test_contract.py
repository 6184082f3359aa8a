"""The API keeps its published contract: schemathesis generates requests from ``/openapi.json``
(valid ones and, by mutation, invalid ones) for every operation and checks each answer: no 5xx,
only documented status codes, bodies that match the declared response schemas, and invalid
requests refused.

Random strings would almost never name a graph or node, so hooks put real ids (of a native
bundle and of a JSON-only graph, and their feature / error / token / logit nodes) into most path
parameters and node-id lists. The run is bounded (a fixed number of examples per operation) and
derandomized, so CI sees the same requests every time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import circuit_atlas
from circuit_atlas.graph import to_graph_json, write_graph_bundle
from circuit_atlas.server.app import create_app
from circuit_atlas.server.features import JsonDirFeatureProvider

from .conftest import STEER_PROMPT, steering_model

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance, negative_data_rejection]
GRAPH_IDS = ("texas", "jsonly")
# CI: 25 derandomized examples per operation and mode (~15 s). A deeper local run:
# CONTRACT_EXAMPLES=300 CONTRACT_RANDOM=1 pytest tests/server/test_contract.py  (~4 min)
EXAMPLES = int(os.environ.get("CONTRACT_EXAMPLES", 25))
RANDOM = bool(os.environ.get("CONTRACT_RANDOM"))


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict:
    """A steering-enabled app over a native bundle, a JSON-only graph and one feature record."""
    model = steering_model()
    graph = circuit_atlas.attribute(model, STEER_PROMPT, progress=False)
    root = tmp_path_factory.mktemp("contract")
    write_graph_bundle(graph, root, "texas")
    doc = to_graph_json(graph, "jsonly", 0.8, 0.98)
    (root / "jsonly.json").write_text(json.dumps(doc))
    features = tmp_path_factory.mktemp("features")
    (features / "0").mkdir()
    (features / "0" / "1.json").write_text(json.dumps({"index": 1, "act_max": 2.5,
                                                       "examples_quantiles": []}))
    app = create_app(root, model=model, features=JsonDirFeatureProvider(Path(features)))
    features_ids = [graph.node_id(i) for i in range(graph.n_selected)]
    # Token and logit nodes are in every view of both graphs; any node is in the full graph.
    always_shown = [node["node_id"] for node in doc["nodes"]
                    if node["feature_type"] in ("embedding", "logit")]
    return {"app": app, "node_ids": graph.node_ids(), "shown_ids": always_shown,
            "feature_ids": features_ids}


def _schema_with_real_ids(served: dict, mutating: list[bool]):
    """The app's OpenAPI schema, with hooks that put real ids into valid requests (while
    `mutating[0]` is set, requests are meant to be invalid and are left as generated)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", served["app"])
    node_ids = st.sampled_from(served["node_ids"])
    shown_ids = st.sampled_from(served["shown_ids"])
    feature_ids = st.sampled_from(served["feature_ids"])
    token_ids = st.sampled_from([i for i in served["shown_ids"] if i.startswith("E_")])
    logit_ids = st.sampled_from([i for i in served["shown_ids"] if not i.startswith("E_")])

    @schema.hook("flatmap_path_parameters")
    def real_ids(context, path_parameters):
        """Mostly real graph and node ids; the generated (random) ones now and then."""
        if mutating[0] or not path_parameters:
            return st.just(path_parameters)
        strategies = {}
        for name, value in path_parameters.items():
            real = {"graph_id": st.sampled_from(GRAPH_IDS), "other_graph_id": st.sampled_from(GRAPH_IDS),
                    "node_id": shown_ids,
                    # attention: edges token -> logit, a head of the tiny model
                    "source": token_ids, "target": logit_ids,
                    "layer": st.integers(0, 1), "head": st.integers(0, 3)}.get(name)
            strategies[name] = st.just(value) if real is None else st.one_of(real, real, st.just(value))
        return st.fixed_dictionaries(strategies)

    @schema.hook("flatmap_body")
    def real_nodes(context, body):
        """Node-id lists of valid bodies drawn from the graph (steering: its feature nodes)."""
        if mutating[0] or not isinstance(body, dict):
            return st.just(body)
        if isinstance(body.get("node_ids"), list) and body["node_ids"]:
            return st.lists(node_ids, min_size=1, max_size=8).map(lambda ids: {**body, "node_ids": ids})
        rows = body.get("interventions")
        if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
            # Real feature nodes, one feature per row (the API refuses two rows on one feature),
            # and a continuation short enough for the tiny model's 64 positions.
            def with_nodes(nodes):
                return {**body, "max_new_tokens": min(body.get("max_new_tokens", 4), 4),
                        "interventions": [{**row, "nodes": [node]} for row, node in zip(rows, nodes)]}
            return st.lists(feature_ids, min_size=len(rows[:4]), max_size=len(rows[:4]),
                            unique=True).map(with_nodes)
        return st.just(body)

    return schema


def _has_inputs(operation) -> bool:
    return any(len(getattr(operation, part)) for part in ("path_parameters", "query", "body"))


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_keeps_its_contract(served, mode) -> None:
    mutating = [mode == GenerationMode.NEGATIVE]
    schema = _schema_with_real_ids(served, mutating)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12  # every operation of the API, whatever is added later
    statuses: dict[str, set[int]] = {}
    for operation in operations:
        if mutating[0] and not _has_inputs(operation):
            continue  # nothing to make invalid
        seen = statuses.setdefault(operation.label, set())

        @settings(max_examples=EXAMPLES, derandomize=not RANDOM, database=None, deadline=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.generate])
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case) -> None:
            response = case.call_and_validate(checks=CHECKS)
            seen.add(response.status_code)

        run()
    if mode == GenerationMode.POSITIVE:  # the real ids reached real graphs and nodes
        answered = [label for label, codes in statuses.items() if 200 in codes]
        assert len(answered) == len(operations), str({k: sorted(v) for k, v in statuses.items()})
