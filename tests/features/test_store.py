"""Reading a store: the frontend JSON (docs/graph-json.md §10.2), labels, and the explorer's provider."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from circuit_atlas.features import (
    BuildSettings,
    FeatureStore,
    FeatureStoreError,
    build_feature_store,
    open_feature_store,
)
from circuit_atlas.features.histogram import (
    default_edges,
    equal_width_histogram,
    percentiles,
    quantile_groups,
)


@pytest.fixture(scope="module")
def store_dir(helpers, tmp_path_factory):
    out = tmp_path_factory.mktemp("store")
    model = helpers.make_model("clt", seed=4)
    build_feature_store(model, helpers.word_texts(20, seed=1), out,
                        BuildSettings(context_len=12, top_k=5, n_samples=16), progress=False)
    return out


def test_frontend_json_has_the_fields_the_frontend_reads(store_dir, helpers):
    with FeatureStore(store_dir, n_quantiles=4, examples_per_quantile=2) as store:
        for layer in range(helpers.N_LAYERS):
            for feature in range(0, helpers.N_FEATURES, 3):
                card = store.card(layer, feature)
                data = json.loads(json.dumps(store.to_frontend_json(layer, feature)))
                assert data["index"] == feature and isinstance(data["transcoder_id"], str)
                assert data["activation_frequency"] == card.density
                assert data["act_min"] == 0.0 and data["act_max"] == card.max_activation
                assert data["top_logits"] == [t.token for t in card.top_logits]
                assert data["bottom_logits"] == [t.token for t in card.bottom_logits]
                assert data["isDead"] is (card.n_active == 0)
                groups = data["examples_quantiles"]
                if card.n_active == 0:
                    assert groups == [] and data["quantile_values"] == []
                    continue
                assert groups[0]["quantile_name"] == "Top activations"
                assert len(groups[0]["examples"]) == len(card.top_examples)
                assert [g["quantile_name"] for g in groups[1:]] == [q.name for q in card.quantile_examples]
                for group in groups:
                    for ex in group["examples"]:
                        assert len(ex["tokens"]) == len(ex["tokens_acts_list"])
                        assert 0 <= ex["train_token_ind"] < len(ex["tokens"])
                        assert isinstance(ex["is_repeated_datapoint"], bool)
                values = data["quantile_values"]
                assert len(values) == 100 and values == sorted(values)
                assert values[-1] == pytest.approx(card.max_activation)
                assert sum(data["histogram"]) == pytest.approx(card.n_active)
                assert len(data["histogram"]) == 32


def test_repeated_windows_are_marked(store_dir):
    with FeatureStore(store_dir, n_quantiles=3, examples_per_quantile=16) as store:
        marked = 0
        for feature in range(24):
            data = store.to_frontend_json(0, feature)
            seen = set()
            card = store.card(0, feature)
            examples = card.top_examples + [e for g in card.quantile_examples for e in g.examples]
            flags = [ex["is_repeated_datapoint"] for g in data["examples_quantiles"] for ex in g["examples"]]
            for ex, flag in zip(examples, flags):
                assert flag == ((ex.document, ex.window) in seen)
                seen.add((ex.document, ex.window))
                marked += flag
        assert marked > 0


def test_labels_are_stored_beside_the_store_and_reach_graph_exports(store_dir, tmp_path):
    from circuit_atlas.graph import random_graph, to_graph_json

    with FeatureStore(store_dir) as store:
        store.set_label(1, 5, "Texas and Dallas")
        store.set_label(0, 2, "capital cities")
        assert store.card(1, 5).label == "Texas and Dallas"
        assert store.to_frontend_json(1, 5)["label"] == "Texas and Dallas"
        store.set_label(0, 2, None)
        assert store.label(0, 2) is None
        assert store.labels() == {(1, 5): "Texas and Dallas"}
        with pytest.raises(FeatureStoreError, match="out of range"):
            store.set_label(2, 0, "no such layer")
    on_disk = json.loads((store_dir / "labels.json").read_text())
    assert on_disk == {"version": 1, "labels": {"1:5": "Texas and Dallas"}}

    graph = random_graph(n_layers=2, n_pos=4, n_sel=12, seed=3, n_features=24)
    coords = {(int(c[0]), int(c[2])) for c in graph.feature_coords}
    with FeatureStore(store_dir) as store:
        for layer, feature in coords:
            store.set_label(layer, feature, f"L{layer}F{feature}")
        doc = to_graph_json(graph, "g", labels=store.labels())
        for layer, feature in coords:
            store.set_label(layer, feature, "")
        assert store.labels() == {(1, 5): "Texas and Dallas"} or (1, 5) in coords
    shown = [n for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert shown and all(n["clerp"] == "L{}F{}".format(*_unpair(n["feature"])) for n in shown)


def _unpair(value: int) -> tuple[int, int]:
    from circuit_atlas.graph import cantor_unpair

    return cantor_unpair(value)


def test_the_explorer_reads_the_store(store_dir):
    from fastapi.testclient import TestClient

    from circuit_atlas.server.app import create_app
    from circuit_atlas.server.features import FeatureProvider, load_feature_provider

    provider = load_feature_provider(store_dir)
    assert isinstance(provider, FeatureProvider)
    with FeatureStore(store_dir) as store:
        assert provider.feature(1, 4) == store.to_frontend_json(1, 4)
    assert provider.feature(5, 0) is None
    client = TestClient(create_app(store_dir.parent, features=provider))
    body = client.get("/api/features/0/3").json()
    assert body["available"] and body["feature"]["index"] == 3
    assert client.get("/api/features/0/999").json()["feature"] is None


def test_lookups_outside_the_store(store_dir, tmp_path):
    assert open_feature_store(tmp_path) is None
    with pytest.raises(FeatureStoreError, match="no feature store"):
        FeatureStore(tmp_path)
    with FeatureStore(store_dir) as store:
        with pytest.raises(FeatureStoreError, match="feature 24 is out of range 0..23"):
            store.card(0, 24)
        with pytest.raises(FeatureStoreError, match="layer -1"):
            store.card(-1, 0)


def test_histogram_helpers_against_direct_computation():
    rng = np.random.default_rng(0)
    values = np.float32(rng.lognormal(mean=-0.5, sigma=1.2, size=5000))
    edges = default_edges()
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    ratio = 10 ** (1 / 16)  # one bin
    estimated = percentiles(counts, edges, float(values.max()))
    exact = np.percentile(values, np.arange(1, 101))
    for q in (5, 25, 50, 75, 95):
        assert estimated[q - 1] / exact[q - 1] == pytest.approx(1, abs=ratio - 1)
    bars = equal_width_histogram(counts, edges, float(values.max()), n_out=20)
    assert sum(bars) == pytest.approx(len(values))
    direct, _ = np.histogram(values, bins=20, range=(0, float(values.max())))
    assert np.abs(np.array(bars) - direct).sum() < 0.1 * len(values)  # shape, up to binning
    groups = quantile_groups(counts, edges, 5)
    assert len(groups) == 5 and sum(g.count for g in groups) == len(values)
    for g in groups:
        inside = ((values >= g.lower) & (values < g.upper)).sum()
        assert inside == g.count and g.count == pytest.approx(1000, rel=0.2)
    assert math.isinf(quantile_groups(np.r_[0, 0, 7], np.float32([1, 2]), 3)[-1].upper)
