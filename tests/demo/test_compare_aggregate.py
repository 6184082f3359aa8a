"""Comparison and aggregation on the demo world, where the planted circuit is known: graphs of
two cities of one region share their circuit, of two regions differ in the region features;
over each region's held-out graphs the recurring answer-position feature is that region's."""

from __future__ import annotations

from collections import defaultdict

import pytest

import circuit_atlas
from circuit_atlas.demo import bundle
from circuit_atlas.features import FeatureStore
from circuit_atlas.graph import aggregate_graphs, compare_graphs


@pytest.fixture(scope="module")
def graphs(model):
    return {item.city: circuit_atlas.attribute(model, item.prompt, progress=False)
            for item in bundle.two_hop_eval_items()}


def _shared(result) -> float:
    return (result.summary["shared influence share a"] + result.summary["shared influence share b"]) / 2


def test_same_region_graphs_share_their_circuit_and_other_regions_do_not(graphs):
    items = bundle.two_hop_eval_items()
    by_region = defaultdict(list)
    for item in items:
        by_region[item.region].append(item.city)
    same, other = [], []
    for item in items:
        mate = next(c for c in by_region[item.region] if c != item.city)
        swap = by_region[item.swap_region][0]
        same.append(_shared(compare_graphs(graphs[item.city], graphs[mate])))
        other.append(_shared(compare_graphs(graphs[item.city], graphs[swap])))
    assert sum(same) / len(same) >= 0.8 and sum(other) / len(other) <= 0.3


def test_dallas_against_oakland_swaps_the_region_feature(model, graphs):
    oakland = circuit_atlas.attribute(model, bundle.toyworld.TWO_HOP_FRAME.format(city="oakland"),
                                      progress=False)
    result = compare_graphs(graphs["dallas"], oakland)
    assert result.target["token_a"] == "austin" and result.target["token_b"] == "sacramento"
    assert [p.role for p in result.positions][-2:] == ["substituted", "last"]
    gone = result.disappeared()[0]
    assert (gone.layer, gone.feature) == (0, 479) and gone.position == "8:8"  # texas, at "is"


def test_each_regions_recurring_answer_feature_is_labelled_with_that_region(graphs):
    items = bundle.two_hop_eval_items()
    with FeatureStore(bundle.demo_features_path("clt")) as store:
        labels = store.labels()
    by_region = defaultdict(list)
    for item in items:
        by_region[item.region].append(graphs[item.city])
    hits = 0
    for region, group in by_region.items():
        result = aggregate_graphs(group, min_frequency=1.0, labels=labels)
        top = [f for f in result.at_answer() if f.frequency == 1.0]
        hits += bool(top) and top[0].label.startswith(region)
        assert result.graph.n_positions == group[0].n_positions
    assert hits >= 12, f"{hits} of {len(by_region)} regions"


def test_supernodes_command_groups_the_texas_code_of_the_dallas_graph(graphs, tmp_path, capsys):
    import json

    from circuit_atlas.cli.main import main
    from circuit_atlas.graph.bundle import write_graph_bundle

    folder = write_graph_bundle(graphs["dallas"], tmp_path, "dallas")
    args = ["supernodes", str(folder), "--features", str(bundle.demo_features_path("clt")),
            "--transcoders", "demo", "--node-threshold", "0.95", "--json", str(tmp_path / "s.json")]
    assert main(args) == 0
    assert "evidence: coactivation, decoder, graph" in capsys.readouterr().out
    data = json.loads((tmp_path / "s.json").read_text())
    texas = next(g for g in data["groups"] if "0_479_8" in g["members"])
    assert texas["name"] == "texas" and texas["members"][0] == "0_479_8"
