"""Steering graphs that exist only as graph-JSON files: one traced graph is written both as a
native bundle and as loose JSON files, and steering the same nodes through the HTTP API must give
identical answers for both (so the recovered token ids and feature coordinates are right);
files that belong to another tokenizer, transcoder set or model size, or that name features the
loaded transcoders lack, are refused with a 4xx and a message; files that cannot name their
transcoders are steered with a warning."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import circuit_atlas
from circuit_atlas.graph import to_graph_json, write_graph_json
from circuit_atlas.io.cantor import cantor_pair
from circuit_atlas.server import write_graph_bundle
from circuit_atlas.server.app import create_app
from circuit_atlas.server.json_graph import UNVERIFIED_WARNING, first_difference

from .conftest import STEER_PROMPT, steering_model

PROMPT = STEER_PROMPT


@pytest.fixture(scope="module")
def model():
    return steering_model()


@pytest.fixture(scope="module")
def graph(model):
    return circuit_atlas.attribute(model, PROMPT, progress=False)


@pytest.fixture(scope="module")
def full_doc(graph) -> dict:
    """The whole graph (nothing pruned), so every feature node exists in the JSON too."""
    return to_graph_json(graph, "full", 1.0, 1.0)


def _without_embeddings(doc: dict, positions: set[int]) -> dict:
    """A pruned file: the embedding nodes at ``positions`` and their links removed."""
    doc = copy.deepcopy(doc)
    gone = {n["node_id"] for n in doc["nodes"]
            if n["feature_type"] == "embedding" and n["ctx_idx"] in positions}
    doc["nodes"] = [n for n in doc["nodes"] if n["node_id"] not in gone]
    doc["links"] = [l for l in doc["links"] if l["source"] not in gone and l["target"] not in gone]
    return doc


def _with(doc: dict, **metadata) -> dict:
    doc = copy.deepcopy(doc)
    doc["metadata"].update(metadata)
    return doc


def _with_feature_node(doc: dict, layer: int, feature: int, pos: int) -> dict:
    doc = copy.deepcopy(doc)
    node = dict(next(n for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder"))
    node.update(node_id=f"{layer}_{feature}_{pos}", layer=str(layer), ctx_idx=pos,
                feature=cantor_pair(layer, feature), jsNodeId=f"{layer}_{feature}-0")
    doc["nodes"].append(node)
    return doc


def _crafted(full_doc: dict) -> dict[str, dict]:
    """Files written to break the reader: odd digits, huge numbers, a huge prompt."""
    def feature_layer(value):
        doc = copy.deepcopy(full_doc)
        next(n for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder")["layer"] = value
        return doc

    def embedding_id(node_id):
        doc = copy.deepcopy(full_doc)
        next(n for n in doc["nodes"] if n["feature_type"] == "embedding")["node_id"] = node_id
        return doc

    huge_prompt = _without_embeddings(full_doc, {0})
    huge_prompt["metadata"]["prompt"] = "the " * 200_000
    return {
        "crafted-superscript-layer": feature_layer("²"),
        "crafted-superscript-schema": _with(full_doc, schema_version="¹"),
        "crafted-huge-token": embedding_id("E_9999999999999999999999999_1"),
        "crafted-long-digits": embedding_id("E_" + "9" * 4400 + "_1"),
        "crafted-newline-id": embedding_id("E_5_1\n"),
        "crafted-huge-prompt": huge_prompt,
    }


def _edit_token(doc: dict, pos: int, text: str) -> dict:
    doc = copy.deepcopy(doc)
    doc["metadata"]["prompt_tokens"][pos] = text
    return doc


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, graph, model, full_doc) -> Path:
    root = tmp_path_factory.mktemp("steer-json")
    write_graph_bundle(graph, root, "native")
    # Our own writer, as a user would call it (it also writes graph-metadata.json).
    write_graph_json(graph, root / "files", "loose", 1.0, 1.0)
    n = graph.n_positions
    pruned = _without_embeddings(full_doc, {1, 3})
    unstripped = [t.lstrip(" ") for t in full_doc["metadata"]["prompt_tokens"]]
    wrong_embedding = _without_embeddings(full_doc, {1})
    for node in wrong_embedding["nodes"]:  # E_{25}_2 claims another token at position 2
        if node["node_id"] == f"E_{int(graph.input_ids[2])}_2":
            node["node_id"] = "E_99_2"
    for link in wrong_embedding["links"]:
        for end in ("source", "target"):
            if link[end] == f"E_{int(graph.input_ids[2])}_2":
                link[end] = "E_99_2"
    long_tokens = full_doc["metadata"]["prompt_tokens"] * 11  # 66 > the tiny model's 64
    logits_moved = copy.deepcopy(full_doc)
    for node in logits_moved["nodes"]:
        if node["feature_type"] == "logit":
            node["layer"] = "6"
    docs = {
        "pruned": pruned,
        "spaceless": _with(_without_embeddings(full_doc, {2}), prompt_tokens=unstripped),
        "model-scan": _with(full_doc, scan=model.lm.name),  # Neuronpedia style: scan = model id
        "no-scan": {**full_doc, "metadata": {k: v for k, v in full_doc["metadata"].items()
                                             if k != "scan"}},
        "other-tc": _with(full_doc, scan="someone/other-transcoders"),
        "other-model": _with(full_doc, info={**full_doc["metadata"]["info"], "model": "someone/other-model"}),
        "bad-token-prompt": _edit_token(_without_embeddings(full_doc, {0}), 3, " off"),
        "bad-token-embed": _edit_token(full_doc, 4, " Ohio"),
        "short-prompt": _with(_without_embeddings(full_doc, {0}), prompt=PROMPT.rsplit(" ", 1)[0]),
        "wrong-embedding": wrong_embedding,
        "feature-range": _with_feature_node(full_doc, 1, 32, n - 1),
        "layer-range": _with_feature_node(full_doc, 2, 0, n - 1),
        "too-long": _with(full_doc, prompt_tokens=long_tokens),
        "logit-layer": logits_moved,
        **_crafted(full_doc),
    }
    for slug, doc in docs.items():
        doc = _with(doc, slug=slug)
        (root / f"{slug}.json").write_text(json.dumps(doc), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def client(data_dir, model) -> TestClient:
    return TestClient(create_app(data_dir, model=model))


def _feature_nodes(graph, doc: dict | None = None) -> list[str]:
    """Feature node ids, strongest activation first (only those the JSON file kept, if given:
    the writer drops feature nodes no kept link touches)."""
    order = sorted(range(graph.n_selected), key=lambda i: -abs(float(graph.selected_activations[i])))
    kept = None if doc is None else {n["node_id"] for n in doc["nodes"]}
    return [graph.node_id(i) for i in order if kept is None or graph.node_id(i) in kept]


def _bodies(graph, doc: dict) -> list[dict]:
    """Requests exercising each op, each position range, both modes and sampling."""
    nodes = _feature_nodes(graph, doc)
    last = [n for n in nodes if n.endswith(f"_{graph.n_positions - 1}")]
    return [
        {"interventions": [{"nodes": [last[0]], "op": "set", "value": 40.0, "positions": "from_node"}],
         "max_new_tokens": 6, "temperature": 0.8, "top_p": 0.9, "seed": 3, "top_k": 5},
        {"interventions": [{"nodes": nodes[:3], "op": "scale", "value": -2.0, "name": "group"}],
         "mode": "constrained", "max_new_tokens": 0},
        {"interventions": [{"nodes": [nodes[0]], "op": "ablate", "positions": "all"},
                           {"nodes": [nodes[3]], "op": "set", "value": 8.0}],
         "max_new_tokens": 4},
    ]


def _comparable(data: dict) -> dict:
    """A steer response without the fields that legitimately differ between two graphs."""
    return {k: v for k, v in data.items() if k not in ("timing", "graph_id", "warning")}


def _steer(client, graph_id: str, body: dict):
    return client.post(f"/api/graphs/{graph_id}/steer", json=body)


@pytest.mark.parametrize("graph_id", ["loose", "pruned", "spaceless", "model-scan"])
def test_json_graph_steers_exactly_like_the_native_bundle(client, graph, full_doc, graph_id) -> None:
    answers = []
    for body in _bodies(graph, full_doc):
        native = _steer(client, "native", body)
        loose = _steer(client, graph_id, body)
        assert native.status_code == 200, native.text
        assert loose.status_code == 200, loose.text
        assert _comparable(loose.json()) == _comparable(native.json())
        assert native.json()["warning"] is None and loose.json()["graph_id"] == graph_id
        answers.append(native.json())
    # The requests reached the model (the comparison is not between two unchanged answers).
    assert all(a["intervention"]["top_before"] != a["intervention"]["top_after"] for a in answers)
    first = answers[0]["generation"]
    assert first["default"]["text"] != first["steered"]["text"]


@pytest.mark.parametrize(
    "graph_id, tokens_from",
    [("loose", "embedding nodes"), ("pruned", "prompt"), ("spaceless", "prompt")],
)
def test_status_of_verified_json_graphs(client, graph_id, tokens_from) -> None:
    status = client.get(f"/api/graphs/{graph_id}/steer").json()
    assert status["available"] is True and status["reason"] is None, status
    assert status["source"] == "json" and status["tokens_from"] == tokens_from
    assert status["warning"] is None  # the file's scan is the loaded transcoders' scan
    native = client.get("/api/graphs/native/steer").json()
    assert native["available"] is True and native["warning"] is None
    assert native["source"] == "native"


@pytest.mark.parametrize("graph_id", ["model-scan", "no-scan"])
def test_unverifiable_identity_steers_with_a_warning(client, graph, full_doc, graph_id) -> None:
    status = client.get(f"/api/graphs/{graph_id}/steer").json()
    assert status["available"] is True and status["warning"] == UNVERIFIED_WARNING
    for body in _bodies(graph, full_doc)[:2]:
        response = _steer(client, graph_id, body)
        assert response.status_code == 200, response.text
        assert response.json()["warning"] == UNVERIFIED_WARNING
        assert _comparable(response.json()) == _comparable(_steer(client, "native", body).json())


REFUSED = {
    "other-tc": "transcoders 'someone/other-transcoders' (metadata.scan) but the server holds",
    "other-model": "model 'someone/other-model' (metadata.info.model) but the server holds",
    "bad-token-prompt": "first difference at position 3: the file has ' off', the tokenizer ' of'",
    "bad-token-embed": "first difference at position 4: the file has ' Ohio', the tokenizer ' Texas'",
    "short-prompt": "first difference at position 5: only the file has ' is'",
    "wrong-embedding": "at position 2 the tokenizer gives id {id2} while the file's embedding node says 99",
    "feature-range": "feature node '1_32_5' names feature 32, but the loaded transcoders have 32",
    "layer-range": "feature node '2_0_5' is at layer 2, but the loaded transcoders have 2 layers",
    "too-long": "the prompt has 66 tokens, more than model 'tiny-llama' accepts (64 positions)",
    "logit-layer": "so it has 5 layers, but the model has 2",
    "crafted-superscript-layer": "has layer='²', but its id says",
    "crafted-huge-prompt": "800,000 characters for",
}


@pytest.mark.parametrize("graph_id", list(REFUSED))
def test_unsafe_json_graphs_are_refused_with_a_reason(client, graph, graph_id) -> None:
    needle = REFUSED[graph_id].format(id2=int(graph.input_ids[2]))  # the graph's own token id
    status = client.get(f"/api/graphs/{graph_id}/steer")
    assert status.status_code == 200
    assert status.json()["available"] is False
    assert needle in status.json()["reason"], status.json()["reason"]
    assert "(a JSON file) cannot be steered" in status.json()["reason"]
    body = {"interventions": [{"nodes": [_feature_nodes(graph)[0]], "op": "ablate"}]}
    response = _steer(client, graph_id, body)
    assert response.status_code == 409, response.text
    assert needle in response.json()["detail"]


@pytest.mark.parametrize("kind", ["error", "token", "logit"])
def test_non_feature_nodes_of_a_json_graph_are_400(client, full_doc, kind) -> None:
    ftype = {"error": "mlp reconstruction error", "token": "embedding", "logit": "logit"}[kind]
    node_id = next(n["node_id"] for n in full_doc["nodes"] if n["feature_type"] == ftype)
    response = _steer(client, "loose", {"interventions": [{"nodes": [node_id], "op": "ablate"}]})
    assert response.status_code == 400
    assert f"node {node_id!r} is a {kind} node" in response.json()["detail"]
    unknown = _steer(client, "loose", {"interventions": [{"nodes": ["1_9_99"], "op": "ablate"}]})
    assert unknown.status_code == 400 and "no node '1_9_99'" in unknown.json()["detail"]


def test_first_difference_tolerates_only_leading_spaces() -> None:
    assert first_difference([" the", "<bos>"], ["the", "<bos>"]) is None
    assert "position 0" in first_difference([" the"], [" the "])
    assert "position 1" in first_difference(["a", "b"], ["a", "c"])
    assert "position 2: only the tokenizer has 'x'" in first_difference(["a", "b", "x"], ["a", "b"])


def test_a_changed_file_is_checked_again(data_dir, model, graph, full_doc) -> None:
    """The steerer caches its check per document; editing the file must not keep a stale verdict."""
    path = data_dir / "editable.json"
    path.write_text(json.dumps(_with(full_doc, slug="editable")), encoding="utf-8")
    client = TestClient(create_app(data_dir, model=model))
    assert client.get("/api/graphs/editable/steer").json()["available"] is True
    bad = _with(_edit_token(full_doc, 4, " Ohio"), slug="editable")
    path.write_text(json.dumps(bad) + " ", encoding="utf-8")  # new size: a new file stamp
    status = client.get("/api/graphs/editable/steer").json()
    assert status["available"] is False and "position 4" in status["reason"]


@pytest.mark.parametrize("graph_id", ["crafted-superscript-schema", "crafted-huge-token",
                                      "crafted-long-digits", "crafted-newline-id"])
def test_crafted_files_are_refused_never_a_server_error(client, graph, full_doc, graph_id) -> None:
    """Whichever layer notices (the graph reader: 422, or the steerer: 409), never a 500."""
    status = client.get(f"/api/graphs/{graph_id}/steer")
    assert status.status_code in (200, 422), status.text
    body = {"interventions": [{"nodes": [_feature_nodes(graph, full_doc)[0]], "op": "ablate"}]}
    response = _steer(client, graph_id, body)
    assert response.status_code in (200, 409, 422), response.text
    if status.status_code == 200 and status.json()["available"]:
        assert response.status_code == 200  # an unreadable schema_version only skips a check
    else:
        assert response.status_code != 200 and response.json()["detail"]


def test_tokens_shown_as_whitespace_symbols_match_raw_whitespace() -> None:
    """circuit-tracer writes a newline token as "⏎" (tab "→", carriage return "↵")."""
    assert first_difference(["a", "\n", "\t"], ["a", "⏎", "→"]) is None
    assert "position 1" in first_difference(["a", "\n"], ["a", "→"])


def test_a_copy_of_the_model_elsewhere_is_steered_with_the_warning(data_dir, model, full_doc) -> None:
    """metadata.info.model naming the same model under another folder is unverified, not foreign."""
    doc = _with(full_doc, slug="model-copy", scan=None,
                info={"model": f"/elsewhere/{model.lm.name}"})
    (data_dir / "model-copy.json").write_text(json.dumps(doc), encoding="utf-8")
    client = TestClient(create_app(data_dir, model=model))
    status = client.get("/api/graphs/model-copy/steer").json()
    assert status["available"] is True and status["warning"] == UNVERIFIED_WARNING
