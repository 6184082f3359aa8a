#!/usr/bin/env python
"""Measure the addition case study on the bundled demo and take its figures.

    python examples/case_study_addition.py [--work DIR] [--docs docs/case-studies] [--no-screenshots]

Writes `<docs>/addition-results.json` (every figure docs/case-studies/addition.md quotes: the graph
of one held-out sum with its top features and labels, where the graphs of all held-out sums put
their most influential earlier feature, the key feature's dashboard and firing table over
training pairs, the combination codes, the ones-digit and carry swaps with their two controls,
per item) and, unless --no-screenshots, PNGs taken with Playwright and /usr/bin/chromium: the
explorer on the held-out sum with the key feature selected, and a bar chart of the swaps.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

import circuit_atlas
from circuit_atlas.cli.demo import copy_features, top_features_text
from circuit_atlas.cli.trace import default_slug
from circuit_atlas.demo import bundle
from circuit_atlas.features import FeatureStore
from circuit_atlas.graph import graph_scores, node_influence
from circuit_atlas.graph.bundle import write_graph_bundle
from circuit_atlas.interventions import intervene

from case_studies.addition import (ONES_SHIFT, PROMPTS_PER_COMBO, carry_items, carry_target,
                                   combo, combo_codes, firing_table, ones_digit_items,
                                   ones_target, run_swap, swap_success_rate, training_pairs)
from case_studies.cli import run_case_study
from case_studies.codes import dense_activations, measure_code, swap_interventions
from case_studies.figures import bar_chart_png, explorer_screenshot


CONDITIONS = (("swap", {}), ("suppress_only", {"inject": False}), ("inject_only", {"suppress": False}))
FIRING_PAIRS_PER_COMBO = 20


def pick_item(items):
    """The graph's prompt: the first held-out "_6 + _9" sum below 100 (the paper's example),
    else the first with a carry."""
    below = [i for i in items if i.a + i.b < 100]
    return next((i for i in below if i.combo == (6, 9)),
                next(i for i in below if sum(i.combo) >= 10))


def feature_row(graph, influence, labels, i) -> dict:
    layer, position, feature = (int(x) for x in graph.feature_coords[i])
    return {"layer": layer, "position": position, "token": graph.tokens[position],
            "feature": feature, "influence": round(float(influence[i]), 4),
            "label": labels.get((layer, feature), "")}


def graph_summary(model, item, labels, work: Path) -> dict:
    t0 = time.perf_counter()
    graph = circuit_atlas.attribute(model, item.prompt, progress=False)
    seconds = time.perf_counter() - t0
    write_graph_bundle(graph, work / "graphs", default_slug(item.prompt), labels=labels)
    scores = graph_scores(graph)
    influence = node_influence(graph)[:graph.n_selected]
    order = sorted(range(graph.n_selected), key=lambda i: -float(influence[i]))
    last = graph.n_positions - 1
    return {
        "prompt": item.prompt, "answer": item.answer, "trace_seconds": round(seconds, 3),
        "tokens": graph.tokens, "b0_index": graph.n_positions + item.b0_position,
        "active_features": int(graph.active_features.shape[0]),
        "replacement_score": round(scores.replacement, 4),
        "completeness_score": round(scores.completeness, 4),
        "top_logits": [[t, round(float(p), 4)] for t, p in
                       zip(graph.logit_tokens[:5], graph.logit_probabilities.tolist())],
        "top_features_last_position": [feature_row(graph, influence, labels, i) for i in order
                                       if int(graph.feature_coords[i, 1]) == last][:8],
        "top_features_earlier": [feature_row(graph, influence, labels, i) for i in order
                                 if int(graph.feature_coords[i, 1]) < last][:10],
        "summary_text": top_features_text(graph, labels),
    }


def where_graphs_look(model, items) -> dict:
    """Over all held-out ones-digit graphs: (layer, token) of the most influential feature
    before the last position, and the share of earlier-feature influence at b0."""
    sites, b0_share = Counter(), []
    for item in tqdm(items, desc="graphs"):
        graph = circuit_atlas.attribute(model, item.prompt, progress=False)
        influence = node_influence(graph)[:graph.n_selected]
        coords = graph.feature_coords
        last, b0 = graph.n_positions - 1, graph.n_positions + item.b0_position
        earlier = [i for i in range(graph.n_selected) if int(coords[i, 1]) < last]
        top = max(earlier, key=lambda i: float(influence[i]))
        name = "b0" if int(coords[top, 1]) == b0 else "other position"
        sites[f"L{int(coords[top, 0])} at {name}"] += 1
        total = sum(float(influence[i]) for i in earlier)
        b0_share.append(sum(float(influence[i]) for i in earlier if int(coords[i, 1]) == b0) / total)
    return {"n_graphs": len(items), "top_earlier_feature_site": dict(sites.most_common()),
            "mean_share_of_earlier_influence_at_b0": round(sum(b0_share) / len(b0_share), 4)}


def key_feature(model, world, store, labels, graph: dict) -> dict:
    """The most influential earlier feature of the graph: dashboard and firing table."""
    top = graph["top_features_earlier"][0]
    layer, feature = top["layer"], top["feature"]
    card = store.card(layer, feature)
    rng = random.Random(0)
    by_combo: dict = {}
    for pair in training_pairs(world):
        by_combo.setdefault(combo(*pair), []).append(pair)
    pairs = [p for c in sorted(by_combo) for p in
             rng.sample(by_combo[c], min(FIRING_PAIRS_PER_COMBO, len(by_combo[c])))]
    table = firing_table(model, pairs, layer, feature)
    return {**top, "dashboard_top_examples": [
                {"text": example_text(ex.tokens, ex.focus), "activation": round(float(ex.activation), 3)}
                for ex in card.top_examples[:8]],
            "firing_table_pairs_per_combo": FIRING_PAIRS_PER_COMBO,
            "firing_table": [[None if v is None else round(v, 2) for v in row] for row in table],
            "combos_firing_80pct": [[a0, b0] for a0 in range(10) for b0 in range(10)
                                    if (table[a0][b0] or 0) >= 0.8]}


def example_text(tokens: list[str], focus: int) -> str:
    """A dashboard example as text, the focal token in [brackets] (BOS dropped)."""
    parts = [f"[{t}]" if i == focus else t for i, t in enumerate(tokens)]
    return "".join(parts[1:]).replace("▁", " ").strip()


def reading(item, target, top: str) -> str:
    """Which arithmetic the swapped answer matches (ones-digit swap)."""
    (a0, b0), (x, y) = item.combo, target
    for name, digit in (("injected combination", (x + y) % 10), ("injected b0 only", (a0 + y) % 10),
                        ("injected a0 only", (x + b0) % 10), ("unchanged", (a0 + b0) % 10)):
        if top == str(digit):
            return name
    return "other"


def swaps(model, items, codes, target_of) -> dict:
    runs = {name: [run_swap(model, i, codes, target_of(i), **opts) for i in tqdm(items, desc=name)]
            for name, opts in CONDITIONS}
    n = len(items)
    return {
        "n_items": n,
        "clean_accuracy": sum(o.clean_correct for o in runs["swap"]) / n,
        "rates": {name: swap_success_rate(out) for name, out in runs.items()},
        "answer_changed": {name: sum(o.swapped_top != o.item.answer for o in out) / n
                           for name, out in runs.items()},
        "mean_suppressed": sum(o.n_suppressed for o in runs["swap"]) / n,
        "mean_injected": sum(o.n_injected for o in runs["swap"]) / n,
        "per_item": [{"prompt": o.item.prompt, "answer": o.item.answer, "target": list(o.target),
                      "predicted": o.predicted, "clean": o.clean_top, "swapped": o.swapped_top,
                      "p_predicted": round(o.target_prob, 4), "suppress_only": s.swapped_top,
                      "inject_only": j.swapped_top}
                     for o, s, j in zip(runs["swap"], runs["suppress_only"], runs["inject_only"])],
    }, runs


def final_position_swap(model, world, items) -> dict:
    """What did not work: a code of "ones digits sum to s mod 10" at the final position (layer 3,
    the only layer where such a code exists at 80 %), measured on 60 training sums per s, swapped
    s -> s + k. Tried before the combination code; reported as a failure."""
    rng = random.Random(0)
    by_sum: dict = {}
    for a, b in training_pairs(world):
        by_sum.setdefault((a + b) % 10, []).append((a, b))
    codes = {s: measure_code(model, str(s), [f"{a}+{b}={str(a + b)[:-1]}" for a, b in
                                             rng.sample(pairs, 60)], layers=(3,), positions=(-1,))
             for s, pairs in sorted(by_sum.items())}
    out = {"code_features": {str(s): sorted(c.features[(3, -1)]) for s, c in codes.items()}}
    for k, opts in ((1, {}), (1, {"inject": False}), (5, {}), (5, {"inject": False})):
        hits = 0
        for item in tqdm(items, desc=f"final-position swap +{k}"):
            s = int(item.answer)
            target = str((s + k) % 10)
            interventions, _, _ = swap_interventions(dense_activations(model, item.prompt),
                                                     codes[s], codes[(s + k) % 10], **opts)
            result = intervene(model, item.prompt, interventions, mode="free", top_k=1)
            hits += result.top_after[0].token == target
        name = f"shift_{k}" + ("_suppress_only" if opts else "")
        out[name] = hits / len(items)
    return out


def measure(work: Path) -> dict:
    model = circuit_atlas.load("demo", "demo")
    world = bundle.demo_world()
    features_dir = copy_features(bundle.demo_features_path("clt"), work / "features")
    ones, carries = ones_digit_items(world), carry_items(world)
    item = pick_item(ones)
    with FeatureStore(features_dir) as store:
        labels = store.labels()
        graph = graph_summary(model, item, labels, work)
        key = key_feature(model, world, store, labels, graph)
    codes = combo_codes(model, world, progress=True)
    ones_result, ones_runs = swaps(model, ones, codes, ones_target)
    ones_result["readings"] = dict(Counter(reading(o.item, o.target, o.swapped_top)
                                           for o in ones_runs["swap"]).most_common())
    ones_result["rate_sum_below_100"] = swap_success_rate(
        o for o in ones_runs["swap"] if o.item.a + o.item.b < 100)
    ones_result["rate_sum_from_100"] = swap_success_rate(
        o for o in ones_runs["swap"] if o.item.a + o.item.b >= 100)
    carry_result, carry_runs = swaps(model, carries, codes, lambda i: carry_target(i.a, i.b))
    for name, carry in (("rate_carry_removed", True), ("rate_carry_added", False)):
        carry_result[name] = swap_success_rate(
            o for o in carry_runs["swap"] if (sum(o.item.combo) >= 10) == carry)
    sizes = [c.size() for c in codes.values()]
    return {
        "held_out_pairs": len(world.held_out_additions),
        "held_out_two_digit_pairs": len(ones),
        "held_out_two_digit_sums_from_100": sum(i.a + i.b >= 100 for i in ones),
        "graph": graph,
        "graphs_over_held_out": where_graphs_look(model, ones),
        "key_feature": key,
        "codes": {"prompts_per_combo": PROMPTS_PER_COMBO, "n_combos": len(codes),
                  "mean_size": round(sum(sizes) / len(sizes), 2), "min_size": min(sizes),
                  "max_size": max(sizes),
                  "size_by_layer": {str(layer): round(sum(len(c.features.get((layer, -2), {}))
                                                          for c in codes.values()) / len(codes), 2)
                                    for layer in (0, 1, 2)},
                  "example": {f"{a0}+{b0}": {f"L{l}": {str(f): [round(v, 3), labels.get((l, f), "")]
                                                        for f, v in feats.items()}
                                             for (l, _), feats in codes[(a0, b0)].features.items()}
                              for a0, b0 in (item.combo, ones_target(item))}},
        "ones_shift": list(ONES_SHIFT),
        "ones_digit_swap": ones_result,
        "carry_swap": carry_result,
        "final_position_sum_code_swap": final_position_swap(model, world, ones),
    }


def figures(work: Path, docs: Path, results: dict) -> list[Path]:
    """The explorer on the held-out sum with the key feature selected, and the swap chart."""
    model = circuit_atlas.load("demo", "demo")
    key = results["key_feature"]
    node_id = f"{key['layer']}_{key['feature']}_{key['position']}"
    with FeatureStore(work / "features") as store:
        shot = explorer_screenshot(work / "graphs", docs / "img" / "addition-explorer.png",
                                   slug=default_slug(results["graph"]["prompt"]),
                                   node_id=node_id, features=store, model=model, pin_neighbours=5)
    ones, carry = results["ones_digit_swap"], results["carry_swap"]
    title = (f"next digit = arithmetic of the injected ones digits ({ones['n_items']} / "
             f"{carry['n_items']} held-out sums)")
    chart = bar_chart_png(docs / "img" / "addition-swap.png", title,
                          [("ones digit: swap", ones["rates"]["swap"]),
                           ("ones digit: suppress only", ones["rates"]["suppress_only"]),
                           ("ones digit: inject only", ones["rates"]["inject_only"]),
                           ("carry: swap", carry["rates"]["swap"]),
                           ("carry: suppress only", carry["rates"]["suppress_only"]),
                           ("carry: inject only", carry["rates"]["inject_only"])])
    return [shot, chart]


def summary(results: dict) -> str:
    rates = {k: {m: results[k][m] for m in ("clean_accuracy", "rates", "answer_changed")}
             for k in ("ones_digit_swap", "carry_swap")}
    return results["graph"]["summary_text"] + "\n" + json.dumps(rates, indent=1)


def main(argv=None) -> int:
    return run_case_study(argv, description=__doc__.split("\n\n")[0],
                          results_name="addition-results.json", work_prefix="addition-case-study-",
                          measure=measure, figures=figures, summary=summary)


if __name__ == "__main__":
    sys.exit(main())
