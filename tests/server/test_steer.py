"""The steering endpoints on a tiny model: results equal direct `intervene` / `generate` calls,
every bad request is a 4xx with a message, refusals (no model, other model, a JSON file of other
transcoders) are 409, and model calls are serialised in a worker thread while the rest of the API
answers."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

import circuit_atlas
from circuit_atlas.graph import to_graph_json
from circuit_atlas.interventions import Intervention, Supernode, generate, intervene
from circuit_atlas.server import write_graph_bundle
from circuit_atlas.server.app import create_app
from circuit_atlas.server.runner import BackgroundServer
from circuit_atlas.server.steer import MAX_CHANGED_FEATURES, MAX_NEW_TOKENS

from .conftest import STEER_PROMPT, steering_model

PROMPT = STEER_PROMPT


@pytest.fixture(scope="module")
def model():
    return steering_model()


@pytest.fixture(scope="module")
def graph(model):
    return circuit_atlas.attribute(model, PROMPT, progress=False)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, graph) -> Path:
    root = tmp_path_factory.mktemp("steer")
    write_graph_bundle(graph, root, "texas")
    write_graph_bundle(dataclasses.replace(graph, transcoder_scan="other-scan"), root, "other-tc")
    write_graph_bundle(dataclasses.replace(graph, model_name="other-model"), root, "other-model")
    (root / "jsonly.json").write_text(json.dumps(to_graph_json(graph, "jsonly", 0.8, 0.98)))
    other = to_graph_json(graph, "other-json", 0.8, 0.98, scan="other-json-scan")
    (root / "other-json.json").write_text(json.dumps(other))
    return root


@pytest.fixture(scope="module")
def client(data_dir, model) -> TestClient:
    return TestClient(create_app(data_dir, model=model))


def _json(value):
    """What a value looks like after the JSON round trip the API does."""
    return json.loads(json.dumps(value))


def _features(graph) -> list[tuple[str, tuple[int, int, int], float]]:
    """(node id, (layer, position, feature), activation) of every feature node, strongest first."""
    rows = []
    for i in range(graph.n_selected):
        coords = tuple(int(v) for v in graph.feature_coords[i])
        rows.append((graph.node_id(i), coords, float(graph.selected_activations[i])))
    return sorted(rows, key=lambda r: -abs(r[2]))


def _steer(client, graph_id: str, body) -> httpx.Response:
    """POST `body` as ASCII JSON (lone surrogates as \\u escapes, as JSON.stringify writes)."""
    return client.post(f"/api/graphs/{graph_id}/steer", content=json.dumps(body),
                       headers={"content-type": "application/json"})


def test_set_from_node_on_equals_direct_calls(client, model, graph) -> None:
    node_id, (layer, pos, feat), _ = _features(graph)[0]
    body = {
        "interventions": [{"nodes": [node_id], "op": "set", "value": 40.0, "positions": "from_node"}],
        "max_new_tokens": 6, "temperature": 0.8, "top_p": 0.9, "seed": 3, "top_k": 5,
    }
    response = _steer(client, "texas", body)
    assert response.status_code == 200, response.text
    data = response.json()
    steer = [Intervention(layer, slice(pos, None), feat, value=40.0)]
    direct = intervene(model, graph.input_ids, steer, mode="free", top_k=5)
    continuation = generate(model, graph.input_ids, steer, 6, temperature=0.8, top_p=0.9, seed=3)
    assert data["intervention"] == _json(direct.to_dict(max_changes=MAX_CHANGED_FEATURES))
    assert data["generation"] == _json(continuation.to_dict())
    # The request reached the model: the steered distribution moved.
    assert data["intervention"]["top_before"] != data["intervention"]["top_after"]
    # "Before" is the clean model on the graph's own tokens, recomputed here by hand.
    with torch.no_grad():
        logits = model.lm.hf_model(input_ids=graph.input_ids[None]).logits[0, -1]
    probs = torch.softmax(logits.double(), -1)
    top = torch.topk(probs, 5)
    assert [t["token_id"] for t in data["intervention"]["top_before"]] == top.indices.tolist()
    got = torch.tensor([t["prob"] for t in data["intervention"]["top_before"]], dtype=torch.float64)
    torch.testing.assert_close(got, top.values, rtol=1e-4, atol=1e-6)
    assert data["generation"]["prompt"].endswith(PROMPT)
    assert data["rows"][0]["nodes"] == [node_id] and data["graph_id"] == "texas"


def test_supernode_scale_constrained_equals_direct_call(client, model, graph) -> None:
    members = [row[0] for row in _features(graph)[:3]]
    body = {
        "interventions": [{"nodes": members, "op": "scale", "value": -2.0, "name": "group"}],
        "mode": "constrained", "max_new_tokens": 0,
    }
    data = _steer(client, "texas", body).json()
    # The interventions package's own node-id lookup, independent of the server's.
    supernode = Supernode.from_graph(graph, members, scale=-2.0)
    direct = intervene(model, graph.input_ids, [supernode], mode="constrained", top_k=10)
    assert data["intervention"] == _json(direct.to_dict(max_changes=MAX_CHANGED_FEATURES))
    assert data["intervention"]["mode"] == "constrained"
    assert data["generation"] is None
    assert data["intervention"]["n_changed_features"] > 0


def test_all_positions_merges_members_of_one_feature(client, model, graph) -> None:
    """Members that are one feature at several positions become one all-positions intervention."""
    by_feature: dict[tuple[int, int], list[str]] = {}
    for node_id, (layer, _pos, feat), _ in _features(graph):
        by_feature.setdefault((layer, feat), []).append(node_id)
    (layer, feat), nodes = max(by_feature.items(), key=lambda kv: len(kv[1]))
    assert len(nodes) >= 2, "the tiny graph should repeat some feature across positions"
    body = {"interventions": [{"nodes": nodes, "op": "ablate", "positions": "all"}],
            "max_new_tokens": 4}
    data = _steer(client, "texas", body).json()
    steer = [Intervention(layer, None, feat, ablate=True)]
    assert data["intervention"] == _json(intervene(model, graph.input_ids, steer).to_dict(
        max_changes=MAX_CHANGED_FEATURES))
    assert data["generation"] == _json(generate(model, graph.input_ids, steer, 4).to_dict())


def _node_of_kind(graph, kind: str) -> str:
    return next(graph.node_id(i) for i in range(graph.n_nodes) if graph.node_kind(i) == kind)


def _row(**kw):
    """A valid row (NODE stands for a real feature node) with some fields overridden."""
    return {"nodes": ["NODE"], "op": "set", "value": 1.0, **kw}


BAD_BODIES = {
    "unknown node": ({"interventions": [_row(nodes=["99_99_99"])]}, "no node '99_99_99'"),
    "not a list": ({"interventions": {"a": 1}}, "interventions: Input should be a valid list"),
    "empty": ({"interventions": []}, "interventions: List should have at least 1 item"),
    "no nodes": ({"interventions": [_row(nodes=[])]}, "interventions[0].nodes: List should have at least 1"),
    "op": ({"interventions": [_row(op="double")]}, "interventions[0]: Input tag 'double' found using 'op' does not match"),
    "positions": ({"interventions": [_row(positions="some")]}, "interventions[0].positions: Input should be"),
    "set without value": ({"interventions": [_row(value=None)]}, "interventions[0].value: Input should be a valid number"),
    "set, value missing": ({"interventions": [{"nodes": ["NODE"], "op": "set"}]}, "interventions[0].value: required for op 'set'"),
    "ablate with value": ({"interventions": [_row(op="ablate", value=2)]}, "interventions[0].value: not a field of op 'ablate'"),
    "string value": ({"interventions": [_row(value="2")]}, "interventions[0].value: Input should be a valid number"),
    "huge value": ({"interventions": [_row(value=1e9)]}, "interventions[0].value: Input should be less than"),
    "huge integer": ({"interventions": [_row(value=10**400)]}, "interventions[0].value: Input should be a valid number"),
    "row key": ({"interventions": [_row(layer=3)]}, "interventions[0].layer: not a field of op 'set'"),
    "body key": ({"interventions": [_row()], "max_tokens": 3}, "max_tokens: unknown field"),
    "long name": ({"interventions": [_row(name="n" * 201)]}, "interventions[0].name: String should have at most"),
    "surrogate name": ({"interventions": [_row(name="x\ud800")]}, "interventions[0].name: Input should be a valid string, unable to parse"),
    "too many tokens": ({"interventions": [_row()], "max_new_tokens": MAX_NEW_TOKENS + 1}, "max_new_tokens"),
    "negative tokens": ({"interventions": [_row()], "max_new_tokens": -1}, "max_new_tokens"),
    "bool tokens": ({"interventions": [_row()], "max_new_tokens": True}, "max_new_tokens"),
    "string tokens": ({"interventions": [_row()], "max_new_tokens": "3"}, "max_new_tokens"),
    "top_p 0": ({"interventions": [_row()], "top_p": 0}, "top_p"),
    "top_p 2": ({"interventions": [_row()], "top_p": 2}, "top_p"),
    "temperature": ({"interventions": [_row()], "temperature": -1}, "temperature"),
    "seed": ({"interventions": [_row()], "seed": 1.5}, "seed"),
    "huge seed": ({"interventions": [_row()], "seed": 10**400}, "seed"),
    "top_k": ({"interventions": [_row()], "top_k": 0}, "top_k"),
    "mode": ({"interventions": [_row()], "mode": "loose"}, "mode: Input should be 'free'"),
    "freeze constrained": ({"interventions": [_row()], "mode": "constrained", "freeze_attention": True},
                           "freeze_attention"),
    "not an object": ([1, 2], "the request body must be a JSON object"),
    # The tiny model accepts 64 positions; the prompt plus 64 new tokens does not fit.
    "past max positions": ({"interventions": [_row()], "max_new_tokens": MAX_NEW_TOKENS}, "positions"),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_bad_requests_are_400_with_a_message(client, graph, case) -> None:
    body, needle = BAD_BODIES[case]
    body = json.loads(json.dumps(body).replace('"NODE"', json.dumps(_features(graph)[0][0])))
    response = _steer(client, "texas", body)
    assert response.status_code == 400, (case, response.text)
    assert needle in response.json()["detail"], response.json()["detail"]


@pytest.mark.parametrize("kind", ["error", "token", "logit"])
def test_non_feature_nodes_are_refused(client, graph, kind) -> None:
    node_id = _node_of_kind(graph, kind)
    response = _steer(client, "texas", {"interventions": [{"nodes": [node_id], "op": "ablate"}]})
    assert response.status_code == 400
    assert f"is a {kind} node" in response.json()["detail"]


@pytest.mark.parametrize("raw", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_values_are_refused(client, graph, raw) -> None:
    node_id = _features(graph)[0][0]
    body = b'{"interventions": [{"nodes": ["%s"], "op": "set", "value": %s}]}' % (node_id.encode(), raw)
    response = client.post("/api/graphs/texas/steer", content=body,
                           headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "finite" in response.json()["detail"]


def test_same_feature_twice_is_refused(client, graph) -> None:
    node_id = _features(graph)[0][0]
    rows = [{"nodes": [node_id], "op": "ablate"}, {"nodes": [node_id], "op": "scale", "value": 2}]
    response = _steer(client, "texas", {"interventions": rows})
    assert response.status_code == 400 and "also targeted" in response.json()["detail"]


def test_invalid_json_and_unknown_graph(client) -> None:
    response = client.post("/api/graphs/texas/steer", content=b"{oops",
                           headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["detail"]
    assert _steer(client, "nope", {"interventions": [{"nodes": ["a"], "op": "ablate"}]}).status_code == 404
    assert client.get("/api/graphs/nope/steer").status_code == 404


def test_without_a_model_steering_is_409_with_how_to(data_dir, graph) -> None:
    client = TestClient(create_app(data_dir))
    body = {"interventions": [{"nodes": [_features(graph)[0][0]], "op": "ablate"}]}
    response = _steer(client, "texas", body)
    assert response.status_code == 409
    assert "--model" in response.json()["detail"] and "--transcoders" in response.json()["detail"]
    info = client.get("/api/steer").json()
    assert info["available"] is False and "--model" in info["reason"]
    status = client.get("/api/graphs/texas/steer")
    assert status.status_code == 200 and status.json()["available"] is False
    assert client.get("/api/graphs").json()["steer"] is False


@pytest.mark.parametrize(
    "graph_id, needle",
    [("other-tc", "transcoders 'other-scan'"), ("other-model", "model 'other-model'"),
     ("other-json", "transcoders 'other-json-scan'")],
)
def test_graphs_of_other_models_are_409(client, graph, graph_id, needle) -> None:
    body = {"interventions": [{"nodes": [_features(graph)[0][0]], "op": "ablate"}]}
    response = _steer(client, graph_id, body)
    assert response.status_code == 409
    assert needle in response.json()["detail"]
    status = client.get(f"/api/graphs/{graph_id}/steer").json()
    assert status["available"] is False and needle in status["reason"]


def test_status_and_listing_with_a_model(client, model) -> None:
    status = client.get("/api/graphs/texas/steer").json()
    assert status["available"] is True and status["reason"] is None
    assert status["model"]["name"] == model.lm.name == "tiny-llama"
    assert status["model"]["transcoders"] == model.transcoders.scan
    assert status["max_new_tokens"] == MAX_NEW_TOKENS
    assert client.get("/api/graphs").json()["steer"] is True
    paths = client.get("/openapi.json").json()["paths"]
    assert "post" in paths["/api/graphs/{graph_id}/steer"]


def test_model_calls_are_serialised_and_the_server_stays_responsive(data_dir, model, graph) -> None:
    app = create_app(data_dir, model=model)
    steerer = app.state.steerer
    steerer.max_pending = 2
    release = threading.Event()
    entered = threading.Event()
    active, peak = [0], [0]
    original = steerer.compute

    def slow_compute(*args, **kwargs):
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        entered.set()
        try:
            assert release.wait(20)
            return original(*args, **kwargs)
        finally:
            active[0] -= 1

    steerer.compute = slow_compute
    body = {"interventions": [{"nodes": [_features(graph)[0][0]], "op": "ablate"}], "max_new_tokens": 2}
    with BackgroundServer(app) as server:
        url = f"{server.url}api/graphs/texas/steer"
        results: list[httpx.Response] = []

        def post() -> None:
            results.append(httpx.post(url, json=body, timeout=30))

        workers = [threading.Thread(target=post) for _ in range(2)]
        for worker in workers:
            worker.start()
        assert entered.wait(20)
        deadline = time.monotonic() + 10
        while steerer._pending < 2:  # the second request waits for the model lock
            assert time.monotonic() < deadline
            time.sleep(0.01)
        start = time.monotonic()
        health = httpx.get(f"{server.url}api/health", timeout=5)
        assert health.status_code == 200 and time.monotonic() - start < 2
        assert httpx.get(f"{server.url}api/graphs/texas", timeout=5).status_code == 200
        busy = httpx.post(url, json=body, timeout=5)
        assert busy.status_code == 503 and "busy" in busy.json()["detail"]
        release.set()
        for worker in workers:
            worker.join(30)
    assert [r.status_code for r in results] == [200, 200]
    assert results[0].json()["intervention"] == results[1].json()["intervention"]
    assert peak[0] == 1


@pytest.mark.parametrize("settings", [{"temperature": 1e-300}, {"temperature": 5e-324},
                                      {"temperature": 1.0, "top_p": 1e-300},
                                      {"temperature": 5e-324, "top_p": 5e-324}])
def test_tiny_temperature_and_top_p_mean_greedy(client, graph, settings) -> None:
    """Tiny positive temperatures are the greedy limit and a tiny top_p keeps the most likely
    token: both used to overflow into "probability tensor contains inf or nan" (a 500)."""
    row = {"nodes": [_features(graph)[0][0]], "op": "scale", "value": 2.0}
    greedy = _steer(client, "texas", {"interventions": [row], "max_new_tokens": 6})
    tiny = _steer(client, "texas", {"interventions": [row], "max_new_tokens": 6, **settings})
    assert greedy.status_code == 200 and tiny.status_code == 200, tiny.text
    for side in ("default", "steered"):
        assert tiny.json()["generation"][side]["token_ids"] == greedy.json()["generation"][side]["token_ids"]


@pytest.mark.parametrize(
    "raw, needle",
    [
        (b'{"interventions": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (b'{"interventions": [{"nodes": ["a"], "op": "set", "value": 1' + b"0" * 5000 + b"}]}",
         "not valid JSON"),
        (b'{"interventions": [{"nodes": ["a"], "op": "set", "value": 1' + b"0" * 400 + b"}]}",
         "interventions[0].value: Input should be a valid number"),
        (b'{"interventions": [{"nodes": ["a\\ud800"], "op": "ablate"}]}', "interventions[0].nodes[0]"),
    ],
)
def test_hostile_bodies_are_400_not_500(client, raw, needle) -> None:
    response = client.post("/api/graphs/texas/steer", content=raw,
                           headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert needle in response.json()["detail"]
    assert client.get("/api/health").status_code == 200  # and the server still answers
