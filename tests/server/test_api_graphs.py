"""Graph list, pruned views and neighbourhoods, checked against the graph itself."""

from __future__ import annotations

import json

import torch
from fastapi.testclient import TestClient

from circuit_atlas.graph import to_graph_json


def test_list_names_both_graphs(client: TestClient, graph) -> None:
    listing = client.get("/api/graphs").json()
    by_id = {g["id"]: g for g in listing["graphs"]}
    assert set(by_id) == {"demo", "jsonly"}
    assert by_id["demo"]["has_native"] and by_id["demo"]["has_json"]
    assert not by_id["jsonly"]["has_native"]
    assert by_id["demo"]["prompt"] == graph.prompt
    assert by_id["demo"]["prompt_tokens"] == graph.tokens
    assert listing["features"] is False


def test_native_view_is_the_pruned_graph_at_the_requested_thresholds(client, graph) -> None:
    loose = client.get("/api/graphs/demo", params={"node_threshold": 0.95, "edge_threshold": 0.99})
    tight = client.get("/api/graphs/demo", params={"node_threshold": 0.4, "edge_threshold": 0.99})
    assert loose.status_code == tight.status_code == 200
    loose, tight = loose.json(), tight.json()
    assert len(tight["nodes"]) < len(loose["nodes"])
    assert len(tight["links"]) < len(loose["links"])
    expected = to_graph_json(graph, "demo", 0.4, 0.99)
    assert [n["node_id"] for n in tight["nodes"]] == [n["node_id"] for n in expected["nodes"]]
    assert tight["links"] == expected["links"]
    assert tight["view"]["source"] == "native"
    assert tight["view"]["n_nodes"] == len(expected["nodes"])


def test_default_thresholds_come_from_the_bundle(client, graph) -> None:
    view = client.get("/api/graphs/demo").json()["view"]
    assert (view["node_threshold"], view["edge_threshold"]) == (0.8, 0.98)


def test_json_only_view_filters_by_influence(client, data_dir) -> None:
    doc = json.loads((data_dir / "loose" / "jsonly.json").read_text())
    threshold = 0.5
    # Independent filter: circuit-tracer's frontend's rule, then drop unlinked features/errors.
    always = {"embedding", "logit"}
    kept = {
        n["node_id"]
        for n in doc["nodes"]
        if n["feature_type"] in always or n["influence"] <= threshold
    }
    links = [l for l in doc["links"] if l["source"] in kept and l["target"] in kept]
    touched = {l["source"] for l in links} | {l["target"] for l in links}
    expected_nodes = [
        n["node_id"]
        for n in doc["nodes"]
        if n["node_id"] in kept and (n["feature_type"] in always or n["node_id"] in touched)
    ]
    view = client.get("/api/graphs/jsonly", params={"node_threshold": threshold}).json()
    assert [n["node_id"] for n in view["nodes"]] == expected_nodes
    assert view["links"] == links
    assert view["view"]["source"] == "json" and view["view"]["edge_threshold"] is None
    full = client.get("/api/graphs/jsonly", params={"node_threshold": 1.0}).json()
    assert len(view["nodes"]) < len(full["nodes"])


def _expected_edges(graph, node_id):
    """Incoming / outgoing (id, weight) from the square dense adjacency."""
    dense = graph.dense_adjacency()
    ids = graph.node_ids()
    i = ids.index(node_id)
    incoming = {(ids[s], float(dense[i, s])) for s in torch.nonzero(dense[i]).flatten().tolist()}
    outgoing = {(ids[t], float(dense[t, i])) for t in torch.nonzero(dense[:, i]).flatten().tolist()}
    return incoming, outgoing


def _check_sorted(rows):
    mags = [abs(r["weight"]) for r in rows]
    assert mags == sorted(mags, reverse=True)


def test_full_neighbourhood_matches_dense_adjacency(client, graph) -> None:
    ids = graph.node_ids()
    probes = [ids[0], ids[graph.n_selected // 2], ids[graph.error_range.start + 7],
              ids[graph.token_range.start + 2], ids[graph.logit_range.start]]
    for node_id in probes:
        data = client.get(f"/api/graphs/demo/nodes/{node_id}", params={"scope": "full"}).json()
        incoming, outgoing = _expected_edges(graph, node_id)
        got_in = {(r["node_id"], r["weight"]) for r in data["incoming"]}
        got_out = {(r["node_id"], r["weight"]) for r in data["outgoing"]}
        assert got_in == incoming and got_out == outgoing, node_id
        assert data["n_incoming"] == len(incoming) and data["n_outgoing"] == len(outgoing)
        _check_sorted(data["incoming"])
        _check_sorted(data["outgoing"])


def test_view_neighbourhood_matches_view_links(client) -> None:
    params = {"node_threshold": 0.7, "edge_threshold": 0.95}
    view = client.get("/api/graphs/demo", params=params).json()
    node = next(n for n in view["nodes"] if n["feature_type"] == "cross layer transcoder")
    data = client.get(f"/api/graphs/demo/nodes/{node['node_id']}", params=params).json()
    incoming = {(l["source"], l["weight"]) for l in view["links"] if l["target"] == node["node_id"]}
    outgoing = {(l["target"], l["weight"]) for l in view["links"] if l["source"] == node["node_id"]}
    assert {(r["node_id"], r["weight"]) for r in data["incoming"]} == incoming
    assert {(r["node_id"], r["weight"]) for r in data["outgoing"]} == outgoing
    assert incoming or outgoing
    _check_sorted(data["incoming"])
    limited = client.get(
        f"/api/graphs/demo/nodes/{node['node_id']}", params={**params, "limit": 1}
    ).json()
    assert len(limited["incoming"]) <= 1 and limited["n_incoming"] == len(incoming)


def test_neighbourhood_labels_come_from_annotations(client, graph) -> None:
    ids = graph.node_ids()
    target = ids[graph.logit_range.start]
    data = client.get(f"/api/graphs/demo/nodes/{target}", params={"scope": "full"}).json()
    source = data["incoming"][0]["node_id"]
    client.put("/api/graphs/demo/annotations", json={"node_labels": {source: "says Austin"}})
    data = client.get(f"/api/graphs/demo/nodes/{target}", params={"scope": "full"}).json()
    assert data["incoming"][0]["label"] == "says Austin"


def test_subgraph_returns_every_edge_among_the_chosen_nodes(client, graph) -> None:
    ids = graph.node_ids()
    chosen = [ids[0], ids[3], ids[graph.n_selected - 1], ids[graph.token_range.start + 1],
              ids[graph.logit_range.start]]
    dense = graph.dense_adjacency()
    index = [ids.index(c) for c in chosen]
    expected = {
        (ids[s], ids[t], float(dense[t, s])) for t in index for s in index if dense[t, s] != 0
    }
    data = client.post("/api/graphs/demo/subgraph", json={"node_ids": chosen + ["9_9_9"]}).json()
    assert {(l["source"], l["target"], l["weight"]) for l in data["links"]} == expected
    assert [n["node_id"] for n in data["nodes"]] == chosen
    assert data["missing"] == ["9_9_9"]


def test_unknown_graph_and_node_are_404(client) -> None:
    for url in ("/api/graphs/nope", "/api/graphs/nope/annotations", "/api/graphs/demo/nodes/1_2_3"):
        response = client.get(url)
        assert response.status_code == 404, url
        assert "detail" in response.json()
    assert client.post("/api/graphs/nope/scores", json={}).status_code == 404


def test_bad_parameters_are_400_naming_them(client) -> None:
    for value in ("1.5", "-0.1", "abc", "nan"):
        response = client.get("/api/graphs/demo", params={"node_threshold": value})
        assert response.status_code == 400 and "node_threshold" in response.json()["detail"]
    response = client.get("/api/graphs/demo/nodes/x", params={"scope": "all"})
    assert response.status_code == 400 and "scope" in response.json()["detail"]


def test_openapi_schema_is_published(client) -> None:
    schema = client.get("/openapi.json").json()
    for path in (
        "/api/graphs",
        "/api/graphs/{graph_id}",
        "/api/graphs/{graph_id}/nodes/{node_id}",
        "/api/graphs/{graph_id}/annotations",
        "/api/graphs/{graph_id}/scores",
        "/api/features/{layer}/{index}",
    ):
        assert path in schema["paths"], path
    assert "put" in schema["paths"]["/api/graphs/{graph_id}/annotations"]


def test_openapi_declares_bodies_answers_and_limits(client) -> None:
    """The contract a client (and the schemathesis run) can check: every operation names its
    response body and its 4xx answers; request bodies carry their limits and value types."""
    schema = client.get("/openapi.json").json()
    defs = schema["components"]["schemas"]
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            answers = operation["responses"]
            assert "$ref" in str(answers["200"]["content"]["application/json"]["schema"]), (method, path)
            assert "400" in answers, (method, path)
            for code, answer in answers.items():
                if code.startswith("4"):
                    assert answer["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/ErrorBody"}, (method, path, code)
    put = schema["paths"]["/api/graphs/{graph_id}/annotations"]["put"]
    assert {"404", "413", "415", "422", "503"} <= set(put["responses"])
    labels = defs["AnnotationPatch"]["properties"]["node_labels"]["anyOf"][0]
    assert labels["additionalProperties"] == {"anyOf": [{"type": "string", "maxLength": 2000},
                                                        {"type": "null"}]}
    assert defs["AnnotationPatch"]["additionalProperties"] is False
    assert defs["SupernodePatch"]["properties"]["members"]["minItems"] == 1
    assert defs["Annotations"]["properties"]["node_labels"]["additionalProperties"] == {"type": "string"}
    steer = defs["SteerBody"]["properties"]
    assert steer["interventions"]["minItems"] == 1 and steer["interventions"]["maxItems"] == 256
    assert steer["top_p"]["exclusiveMinimum"] == 0 and steer["top_p"]["maximum"] == 1
    assert defs["ValueRow"]["properties"]["value"]["maximum"] == 1e6
    assert "value" in defs["ValueRow"]["required"] and "value" not in defs["AblateRow"]["properties"]
    assert defs["AblateRow"]["properties"]["nodes"]["minItems"] == 1


def test_index_and_static_files(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "static/js/main.js" in page.text
    script = client.get("/static/js/main.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
