"""How good are suggested supernodes? Measured on the demo world, where the truth is known.

    python examples/supernode_suggestions.py            # ≈ 1 min on one CPU thread
    python examples/supernode_suggestions.py --json results.json

Two measurements, each against ground truth taken from the model's *activations* on prompts
(never from the feature store the suggestions read, nor from labels):

1. **Region purity.** A feature is a *region feature* of region R when, at the answer position of
   the two-hop questions about the training cities ("the capital of the region containing <city>
   is"), at least 80 % of its firings are on cities of R (and it fires at least twice). Many
   features of the demo's transcoders fire for several regions (a combinatorial code, see
   docs/case-studies.md); they are no region's features and do not count. Suggestions are made
   (a) on each held-out question's graph and (b) on the union of those graphs (their typical
   circuit with every feature any graph keeps, `aggregate_graphs(min_frequency=1/48)`), where
   the features of all sixteen regions meet. Purity: over the suggested groups, the share of
   their region features that belong to the group's majority region.
2. **Language separation.** On the graphs of the opposite questions in english, french and
   spanish, a feature is *language-specific* when, at the asked-about word or at the final
   position, it fires on the questions of one language and (almost) never on the others'
   (other rates at most a tenth of its own), and *shared* when it fires on all three languages
   at comparable rates (each at least half of the highest). Separation: over the suggested
   groups, the share of their classified features that belong to the group's majority class,
   and how many groups mix the two classes.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

import torch

REGION_SHARE = 0.8
CLASS_SHARE_SPECIFIC = 0.1
CLASS_SHARE_SHARED = 0.5


# ---------------------------------------------------------------------- ground truth
def region_features(model, world) -> dict[tuple[int, int], str]:
    """(layer, feature) -> region, from activations at the answer position (training cities)."""
    from circuit_atlas.demo import toyworld

    counts: dict[tuple[int, int], Counter] = defaultdict(Counter)
    for city in world.training_cities:
        tokens = model.tokenize(toyworld.TWO_HOP_FRAME.format(city=city))
        acts = model.run(tokens).activations.to_dense()
        for layer in range(acts.shape[0]):
            for feature in (acts[layer, -1] > 0).nonzero().flatten().tolist():
                counts[(layer, feature)][world.city_region[city]] += 1
    truth = {}
    for site, per_region in counts.items():
        region, n = per_region.most_common(1)[0]
        total = sum(per_region.values())
        if total >= 2 and n / total >= REGION_SHARE:
            truth[site] = region
    return truth


def language_classes(model) -> dict[tuple[int, int], str]:
    """(layer, feature) -> "specific" | "shared", from firing rates per language (module doc)."""
    from case_studies import multilingual as ml

    positions = (ml.WORD_POSITION, -1)
    counts: dict[int, dict[tuple[int, int], Counter]] = {p: defaultdict(Counter) for p in positions}
    totals: Counter = Counter()
    for word in ml.all_words():
        totals[word.language] += 1
        acts = model.run(model.tokenize(word.question)).activations.to_dense()
        for position in positions:
            for layer, feature in (acts[:, position] > 0).nonzero().tolist():
                counts[position][(layer, feature)][word.language] += 1
    classes: dict[tuple[int, int], set[str]] = defaultdict(set)
    for per_site in counts.values():
        for site, per_language in per_site.items():
            rates = [per_language[lang] / totals[lang] for lang in ml.LANGUAGES]
            high = max(rates)
            if high < 0.2:
                continue
            if sorted(rates)[-2] <= CLASS_SHARE_SPECIFIC * high:
                classes[site].add("specific")
            elif min(rates) >= CLASS_SHARE_SHARED * high:
                classes[site].add("shared")
    return {site: kinds.pop() for site, kinds in classes.items() if len(kinds) == 1}


# ---------------------------------------------------------------------- scoring
def purity(groups, truth: dict[tuple[int, int], str]) -> dict[str, float]:
    """Share of the classified members of the groups that belong to their group's majority
    class; also how many members were classified and how many groups mix classes."""
    agree = total = mixed = scored = 0
    for group in groups:
        kinds = [truth[(layer, feature)] for layer, _, feature in group.features if (layer, feature) in truth]
        if not kinds:
            continue
        scored += 1
        counts = Counter(kinds)
        agree += counts.most_common(1)[0][1]
        total += len(kinds)
        mixed += len(counts) > 1
    return {"purity": agree / total if total else float("nan"), "members": total,
            "groups": scored, "mixed_groups": mixed}


def measure(model, store, *, per_graph_threshold: float = 0.95, words_step: int = 1,
            options=None) -> dict:
    """Both measurements (module docstring) with `suggest_supernodes(**options)`; the language
    one on every `words_step`-th opposite question (1: all 90)."""
    from circuit_atlas import attribute
    from circuit_atlas.demo import bundle
    from case_studies import multilingual as ml
    from circuit_atlas.features.supernodes import suggest_supernodes
    from circuit_atlas.graph import aggregate_graphs

    options = options or {}
    world = bundle.demo_world()
    regions = region_features(model, world)
    items = bundle.two_hop_eval_items()
    graphs = [attribute(model, item.prompt, progress=False) for item in items]
    per_graph = []
    for graph in graphs:
        per_graph += suggest_supernodes(graph, features=store, node_threshold=per_graph_threshold,
                                        **options).groups
    union = aggregate_graphs(graphs, min_frequency=1 / len(graphs)).graph
    union_groups = suggest_supernodes(union, features=store, node_threshold=1.0, **options).groups
    classes = language_classes(model)
    language_groups = []
    for word in ml.all_words()[::words_step]:
        graph = attribute(model, word.question, progress=False)
        language_groups += suggest_supernodes(graph, features=store,
                                              node_threshold=per_graph_threshold, **options).groups
    return {
        "region_features": len(regions),
        "region_purity_per_graph": purity(per_graph, regions),
        "region_purity_union": purity(union_groups, regions),
        "union_groups": [{"name": g.name, "members": g.members,
                          "regions": [regions.get((l, f)) for l, _, f in g.features]}
                         for g in union_groups],
        "classified_features": dict(Counter(classes.values())),
        "language_separation": purity(language_groups, classes),
    }


def main() -> None:
    import circuit_atlas
    from circuit_atlas.demo.bundle import demo_features_path
    from circuit_atlas.features import FeatureStore

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = circuit_atlas.load("demo", "demo")
    with FeatureStore(demo_features_path("clt")) as store:
        results = measure(model, store)
    for key in ("region_purity_per_graph", "region_purity_union", "language_separation"):
        r = results[key]
        print(f"{key:>26}: purity {r['purity']:.3f} over {r['members']} classified members of "
              f"{r['groups']} groups ({r['mixed_groups']} mixed)")
    print(f"region features: {results['region_features']}; language classes: "
          f"{results['classified_features']}")
    for group in results["union_groups"]:
        print(f"  {group['name']:<28} {' '.join(group['members'])}  regions {group['regions']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
