"""Suggested supernodes on the demo world, where the truth is known (the measurement lives in
examples/supernode_suggestions.py): region features of the held-out two-hop graphs group by
region (goal: purity >= 0.8, also on the union of all those graphs, where the sixteen regions
meet), and language-specific features stay apart from features shared by the three languages."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from circuit_atlas.demo import bundle
from circuit_atlas.features import FeatureStore

EXAMPLE = Path(__file__).parents[2] / "examples" / "supernode_suggestions.py"


@pytest.fixture(scope="module")
def results(model):
    spec = importlib.util.spec_from_file_location("supernode_suggestions", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    with FeatureStore(bundle.demo_features_path("clt")) as store:
        assert store.has_occurrence_sketches  # the shipped store carries co-activation sketches
        return example.measure(model, store, words_step=3)


def test_region_features_group_by_region(results):
    assert results["region_features"] >= 16
    per_graph, union = results["region_purity_per_graph"], results["region_purity_union"]
    assert per_graph["purity"] >= 0.8 and per_graph["members"] >= 20
    assert union["purity"] >= 0.8 and union["members"] >= 8 and union["groups"] >= 5


def test_language_specific_and_shared_features_are_separated(results):
    separation = results["language_separation"]
    assert set(results["classified_features"]) == {"specific", "shared"}
    assert separation["purity"] >= 0.9 and separation["members"] >= 30
    assert separation["mixed_groups"] <= 0.1 * separation["groups"]
