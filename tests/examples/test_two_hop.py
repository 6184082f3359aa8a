"""The planted two-hop circuit, found by the tools: graph -> region features -> swap intervention.

1. In the attribution graph of held-out questions, among the most influential feature nodes at the
   last two positions (the city and "is") there is a feature whose dashboard responds to the
   intermediate region: at least 80 % of its top examples mention that region, one of its cities
   or its capital before the focal token. This check reads the feature store directly; it does
   not use the labelling code.
2. Suppressing the region's features and injecting another region's (`case_studies.swap`:
   region codes measured on training cities only) turns the answer into the other region's
   capital on at least 80 % of the held-out questions; suppressing alone changes the answer but
   not into that capital.
"""

from __future__ import annotations

import pytest

import circuit_atlas
from circuit_atlas.cli.demo import copy_features
from circuit_atlas.demo import bundle
from circuit_atlas.features import FeatureStore
from circuit_atlas.graph import node_influence

from case_studies.swap import region_codes, run_swap, swap_success_rate

TOP_N = 10


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = copy_features(bundle.demo_features_path("clt"), tmp_path_factory.mktemp("features"))
    with FeatureStore(folder) as opened:
        yield opened


def _names(region: str) -> set[str]:
    world = bundle.demo_world()
    return {region, world.capitals[region]} | {c for c, r in world.city_region.items() if r == region}


def responds_to_region(card, region: str) -> bool:
    names = _names(region)
    tops = card.top_examples
    seen = [any(t.replace("▁", " ").strip() in names for t in ex.tokens[:ex.focus + 1]) for ex in tops]
    return len(tops) >= 5 and sum(seen) >= 0.8 * len(tops)


def _region_feature_rank(model, store, item) -> int | None:
    """Rank (0 = most influential) of the first feature among the TOP_N most influential at the
    last two positions whose dashboard responds to the intermediate region; None if none does."""
    graph = circuit_atlas.attribute(model, item.prompt, progress=False)
    influence = node_influence(graph)[:graph.n_selected]
    coords = graph.feature_coords
    last = graph.n_positions - 1
    candidates = [i for i in range(graph.n_selected) if int(coords[i, 1]) >= last - 1]
    top = sorted(candidates, key=lambda i: -float(influence[i]))[:TOP_N]
    for rank, i in enumerate(top):
        if responds_to_region(store.card(int(coords[i, 0]), int(coords[i, 2])), item.region):
            return rank
    return None


def test_default_prompt_graph_shows_the_intermediate_region(model, store):
    item = bundle.default_two_hop_item()
    assert _region_feature_rank(model, store, item) is not None, (
        f"no {item.region} feature among the top {TOP_N} at the last positions of {item.prompt!r}")


def test_most_held_out_graphs_show_the_intermediate_region(model, store):
    items = bundle.two_hop_eval_items()
    ranks = {item.city: _region_feature_rank(model, store, item) for item in items}
    found = sum(rank is not None for rank in ranks.values()) / len(items)
    assert found >= 0.8, f"region feature in the top {TOP_N} for only {found:.2%}: {ranks}"


def test_swapping_the_region_changes_the_answer_to_the_other_capital(model):
    world = bundle.demo_world()
    codes = region_codes(model, world)
    held_out = set(world.held_out_cities)
    assert all(not held_out & set(code.cities) for code in codes.values())
    items = bundle.two_hop_eval_items()
    outcomes = [run_swap(model, item, codes) for item in items]
    rate = swap_success_rate(outcomes)
    failures = [(o.item.city, o.item.swap_capital, o.swapped_top) for o in outcomes if not o.swapped]
    assert rate >= 0.8, f"swap success {rate:.3f}; failures {failures}"
    # before the swap the model answered the true capital (it composes)
    assert sum(o.clean_correct for o in outcomes) >= 0.8 * len(outcomes)
    # control: suppressing alone breaks the answer but never produces the other capital, so the
    # injected code is what carries *which* region the model uses
    suppressed = [run_swap(model, item, codes, inject=False) for item in items]
    assert swap_success_rate(suppressed) <= 0.1
    assert sum(not o.clean_correct or o.swapped_top != o.item.answer for o in suppressed) >= 0.5 * len(items)
