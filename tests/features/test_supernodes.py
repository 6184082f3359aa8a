"""Supernode suggestions: the co-activation estimate from store sketches, the clustering, the
names, and the JSON the explorer will read."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

import circuit_atlas
from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.features import BuildSettings, FeatureStore, build_feature_store
from circuit_atlas.features.keys import sample_keys
from circuit_atlas.features.supernodes import (
    average_linkage,
    coactivation,
    group_name,
    sketch_jaccard,
    suggest_supernodes,
)


def test_sketch_jaccard_is_exact_below_k_and_close_above():
    keys = sample_keys(0, torch.arange(20000)).numpy()
    a, b = keys[:30], keys[20:50]  # overlap 10 of 50
    assert sketch_jaccard(np.sort(a), np.sort(b), k=100) == pytest.approx(10 / 50)
    big_a, big_b = keys[:12000], keys[6000:18000]  # true Jaccard 6000 / 18000
    k = 400
    estimate = sketch_jaccard(np.sort(big_a)[:k], np.sort(big_b)[:k], k)
    assert abs(estimate - 1 / 3) < 4 * np.sqrt((1 / 3) * (2 / 3) / k)
    assert sketch_jaccard(np.array([], dtype=np.int64), np.sort(a), 10) == 0.0


def test_coactivation_is_the_overlap_coefficient():
    # |A| = 100, |B| = 20, B inside A: Jaccard 0.2, overlap 1
    assert coactivation(0.2, 100, 20) == pytest.approx(1.0)
    assert coactivation(0.0, 100, 20) == 0.0
    assert coactivation(1 / 3, 30, 30) == pytest.approx(0.5)  # 15 shared of 30


def test_average_linkage_recovers_blocks_and_stops_at_the_threshold():
    blocks = [[0, 3, 5], [1, 4], [2], [6, 7]]
    n = 8
    sim = torch.full((n, n), 0.1, dtype=torch.float64)
    for block in blocks:
        for i in block:
            for j in block:
                sim[i, j] = 0.9
    sim[0, 3] = sim[3, 0] = 0.6  # one weaker link inside a block: the mean still joins it
    assert sorted(average_linkage(sim, 0.5)) == sorted(sorted(b) for b in blocks)
    assert len(average_linkage(sim, 0.95)) == n  # nothing reaches the threshold
    assert average_linkage(sim, 0.05) == [list(range(n))]


def test_group_names_come_from_the_labels_that_carry_the_influence():
    assert group_name(["texas (region)", "texas (city)", "digits"], [0.5, 0.2, 0.1], "x") == "texas"
    assert group_name(["texas", "ohio"], [0.5, 0.4], "x") == "texas / ohio"
    assert group_name(["", ""], [0.5, 0.4], "fallback") == "fallback"


@pytest.fixture(scope="module")
def traced(helpers, tmp_path_factory):
    """A tiny CLT model, a store whose samples hold every occurrence (so sketches are exact),
    and the graph of one prompt."""
    model = helpers.make_model("clt", seed=3)
    texts = helpers.word_texts(30, seed=2)
    out = tmp_path_factory.mktemp("store")
    build_feature_store(model, texts, out, BuildSettings(context_len=12, n_samples=4000),
                        progress=False)
    graph = circuit_atlas.attribute(model, "the big red dog said one two", progress=False)
    return model, FeatureStore(out), graph, helpers.brute_force(model, texts, 12)


def test_store_sketches_give_the_exact_coactivation_when_they_hold_every_occurrence(traced):
    model, store, _, brute = traced
    assert store.has_occurrence_sketches
    sites = [(layer, f) for layer in range(2) for f in range(0, 24, 5)]
    occurrences = {s: {(d, w, p) for _, d, w, p in brute.occurrences(*s)} for s in sites}
    checked = 0
    for i, a in enumerate(sites):
        for b in sites[i + 1:]:
            A, B = occurrences[a], occurrences[b]
            if not A or not B:
                continue
            exact = len(A & B) / len(A | B)
            estimate = sketch_jaccard(store.sample_keys(*a), store.sample_keys(*b), store.n_samples)
            assert estimate == pytest.approx(exact)
            assert store.activation_count(*a) == len(A)
            overlap = coactivation(estimate, len(A), len(B))
            assert overlap == pytest.approx(len(A & B) / min(len(A), len(B)))
            checked += 1
    assert checked > 10
    keys = store.sample_keys(0, 1)
    assert list(keys) == sorted(keys)


def test_suggestions_are_json_with_graph_node_ids(traced):
    model, store, graph, _ = traced
    result = suggest_supernodes(graph, features=store, transcoders=model.transcoders,
                                node_threshold=1.0, min_similarity=0.3)
    assert set(result.evidence_used) == {"decoder", "coactivation", "graph"}
    data = json.loads(json.dumps(result.to_json()))
    assert data["format"] == "circuit-atlas-supernode-suggestions" and data["groups"]
    ids = set(graph.node_ids())
    for group, qparam in zip(result.groups, result.as_qparams()):
        assert len(group.members) >= 2 and set(group.members) <= ids
        assert qparam == [group.name, *group.members]
        assert group.cohesion >= 0.3 - 1e-9
        assert set(group.evidence) == {"decoder", "coactivation", "graph"}
    members = [m for g in result.groups for m in g.members]
    assert len(members) == len(set(members))  # a feature is in one group at most
    assert set(result.candidates) >= set(members)


def test_evidence_can_be_left_out_and_bad_nodes_are_refused(traced):
    model, store, graph, _ = traced
    only_graph = suggest_supernodes(graph, node_threshold=1.0)
    assert only_graph.evidence_used == ["graph"]
    no_coact = suggest_supernodes(graph, features=store, weights={"coactivation": 0},
                                  node_threshold=1.0)
    assert no_coact.evidence_used == ["decoder", "graph"]
    assert no_coact.settings["decoder_source"] == "logit effects"
    with pytest.raises(CircuitAtlasError, match="token node"):
        suggest_supernodes(graph, nodes=[graph.node_id(graph.token_index(1))])
    with pytest.raises(CircuitAtlasError, match="no node"):
        suggest_supernodes(graph, nodes=["9_9_9"])
    with pytest.raises(CircuitAtlasError, match="no evidence"):
        suggest_supernodes(graph, weights={"graph": 0})
    chosen = [graph.node_id(i) for i in random.Random(0).sample(range(graph.n_selected), 6)]
    assert set(suggest_supernodes(graph, nodes=chosen).candidates) == set(chosen)
