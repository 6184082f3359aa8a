"""random_graph and synthetic_graph_json: the synthetic graphs respect the structure of real
attribution graphs."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from circuit_atlas.errors import ShapeMismatchError
from circuit_atlas.graph import random_graph, read_graph_json, synthetic_graph_json
from circuit_atlas.graph.export import SCHEMA_FILE


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_graph_is_causal(seed: int) -> None:
    g = random_graph(n_layers=4, n_pos=6, n_sel=40, n_logits=4, seed=seed)
    coords = g.feature_coords
    for t in range(g.n_selected):
        lt, pt, _ = coords[t].tolist()
        row = g.adjacency[t]
        for s in torch.nonzero(row[: g.n_selected]).flatten().tolist():
            ls, ps, _ = coords[s].tolist()
            assert ls < lt and ps <= pt
        for col in torch.nonzero(row[g.error_range.start : g.error_range.stop]).flatten().tolist():
            le, pe = divmod(col, g.n_positions)
            assert le < lt and 0 < pe <= pt
        for pos in torch.nonzero(row[g.token_range.start :]).flatten().tolist():
            assert pos <= pt
    # no features or errors at the zeroed BOS position
    assert (g.active_features[:, 1] > 0).all()
    error_cols = g.adjacency[:, g.error_range.start : g.error_range.stop].reshape(-1, g.n_layers, g.n_positions)
    assert not error_cols[:, :, 0].any()
    # the feature→feature block is strictly lower triangular: the graph is a DAG
    assert not torch.triu(g.adjacency[: g.n_selected, : g.n_selected]).any()


def test_random_graph_is_deterministic_and_seed_dependent() -> None:
    a = random_graph(3, 5, 20, 3, seed=7)
    assert a == random_graph(3, 5, 20, 3, seed=7)
    assert a != random_graph(3, 5, 20, 3, seed=8)


def test_random_graph_targets() -> None:
    g = random_graph(2, 4, 10, 5, seed=0, n_custom_targets=2)
    probs = g.logit_probabilities
    assert (probs[:-1] >= probs[1:]).all() and float(probs.sum()) < 1.0
    assert [g.is_virtual_logit(i) for i in range(5)] == [False] * 3 + [True] * 2
    assert g.logit_token_ids[3:].tolist() == [g.vocab_size + 3, g.vocab_size + 4]
    assert g.n_active == 10 + 10 // 4


def test_random_graph_rejects_impossible_sizes() -> None:
    with pytest.raises(ShapeMismatchError):
        random_graph(n_layers=1, n_pos=1, n_sel=3)
    with pytest.raises(ShapeMismatchError):
        random_graph(n_layers=1, n_pos=2, n_sel=10, n_features=2)


def test_synthetic_graph_json_is_a_valid_causal_graph(tmp_path) -> None:
    """The long-prompt graphs the explorer's tests and benchmark use: valid graph JSON (schema and
    our reader), the asked sizes, causal distinct links, logits most probable first, and runs of
    positions with no node but their embedding."""
    doc = synthetic_graph_json(300, 400, 2500, n_layers=8, n_logits=6, seed=4, slug="s")
    jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text())).validate(doc)
    (tmp_path / "s.json").write_text(json.dumps(doc))
    assert len(read_graph_json(tmp_path / "s.json")["links"]) == 2500
    nodes = {n["node_id"]: n for n in doc["nodes"]}
    assert len(nodes) == len(doc["nodes"])
    features = [n for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert len(features) == 400 and all(n["ctx_idx"] > 0 for n in features)
    assert len(doc["metadata"]["prompt_tokens"]) == 300
    assert sorted(n["ctx_idx"] for n in doc["nodes"] if n["feature_type"] == "embedding") == list(range(300))
    pairs = {(link["source"], link["target"]) for link in doc["links"]}
    assert len(pairs) == len(doc["links"])
    layer = lambda n: -1 if n["feature_type"] == "embedding" else int(n["layer"])  # noqa: E731
    for link in doc["links"]:
        source, target = nodes[link["source"]], nodes[link["target"]]
        assert source["feature_type"] != "logit" and target["feature_type"] not in ("embedding", "mlp reconstruction error")
        assert layer(source) < layer(target) and source["ctx_idx"] <= target["ctx_idx"]
    probs = [n["token_prob"] for n in doc["nodes"] if n["feature_type"] == "logit"]
    assert len(probs) == 6 and probs == sorted(probs, reverse=True) and sum(probs) < 1
    busy = {n["ctx_idx"] for n in doc["nodes"] if n["feature_type"] != "embedding"}
    assert 30 < len(busy) < 200  # most positions have no node but their embedding
