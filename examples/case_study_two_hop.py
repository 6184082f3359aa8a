#!/usr/bin/env python
"""Measure the two-hop case study on the bundled demo and take its figures.

    python examples/case_study_two_hop.py [--work DIR] [--docs docs/case-studies] [--no-screenshots]

Writes `<docs>/two-hop-results.json` (every figure docs/case-studies.md quotes: graph sizes and
scores, the top features at the last positions with their labels, the swap success rate and its
two controls, per question) and, unless --no-screenshots, PNGs taken with Playwright and
/usr/bin/chromium (headless): the explorer on the default prompt with a region feature selected,
and a bar chart of the swap results.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import circuit_atlas
from circuit_atlas.cli.demo import copy_features, top_features_text
from circuit_atlas.cli.trace import default_slug
from circuit_atlas.demo import bundle
from circuit_atlas.features import FeatureStore
from circuit_atlas.graph import graph_scores, node_influence
from circuit_atlas.graph.bundle import write_graph_bundle

from case_studies.cli import run_case_study
from case_studies.figures import bar_chart_png, explorer_screenshot
from case_studies.swap import region_codes, run_swap, swap_success_rate


def measure(work: Path) -> dict:
    model = circuit_atlas.load("demo", "demo")
    features_dir = copy_features(bundle.demo_features_path("clt"), work / "features")
    with FeatureStore(features_dir) as store:
        labels = store.labels()
    world = bundle.demo_world()
    t0 = time.perf_counter()
    graph = circuit_atlas.attribute(model, bundle.DEFAULT_PROMPT, progress=False)
    trace_seconds = time.perf_counter() - t0
    slug = default_slug(bundle.DEFAULT_PROMPT)
    write_graph_bundle(graph, work / "graphs", slug, labels=labels)
    scores = graph_scores(graph)
    influence = node_influence(graph)[:graph.n_selected]
    coords = graph.feature_coords
    last = graph.n_positions - 1
    top = sorted((i for i in range(graph.n_selected) if int(coords[i, 1]) >= last - 1),
                 key=lambda i: -float(influence[i]))[:10]
    codes = region_codes(model, world)
    items = bundle.two_hop_eval_items()
    runs = {name: [run_swap(model, item, codes, **opts) for item in items]
            for name, opts in (("swap", {}), ("suppress_only", {"inject": False}),
                               ("inject_only", {"suppress": False}))}
    return {
        "prompt": bundle.DEFAULT_PROMPT,
        "trace_seconds": round(trace_seconds, 2),
        "graph": {"active_features": int(graph.active_features.shape[0]),
                  "replacement_score": round(scores.replacement, 4),
                  "completeness_score": round(scores.completeness, 4),
                  "top_logits": [[t, round(float(p), 4)] for t, p in
                                 zip(graph.logit_tokens[:5], graph.logit_probabilities.tolist())]},
        "top_features_last_positions": [
            {"layer": int(coords[i, 0]), "position": int(coords[i, 1]),
             "token": graph.tokens[int(coords[i, 1])], "feature": int(coords[i, 2]),
             "influence": round(float(influence[i]), 4),
             "label": labels.get((int(coords[i, 0]), int(coords[i, 2])), "")} for i in top],
        "summary_text": top_features_text(graph, labels),
        "region_code_sizes": {r: c.size() for r, c in sorted(codes.items())},
        "texas_code": {f"L{l} {p}": {str(f): [round(v, 3), labels.get((l, f), "")]
                                     for f, v in feats.items()}
                       for (l, p), feats in codes["texas"].features.items()},
        "n_labels": len(labels),
        "held_out_questions": len(items),
        "clean_accuracy": sum(o.clean_correct for o in runs["swap"]) / len(items),
        "rates": {name: swap_success_rate(out) for name, out in runs.items()},
        "answer_changed": {name: sum(o.swapped_top != o.item.answer for o in out) / len(items)
                           for name, out in runs.items()},
        "per_question": [
            {"city": o.item.city, "region": o.item.region, "swap_region": o.item.swap_region,
             "clean": o.clean_top, "swapped": o.swapped_top,
             "target": o.item.swap_capital, "p_target": round(o.swap_capital_prob, 4),
             "suppressed": o.n_suppressed, "injected": o.n_injected,
             "suppress_only": s.swapped_top, "inject_only": j.swapped_top}
            for o, s, j in zip(runs["swap"], runs["suppress_only"], runs["inject_only"])],
    }


def figures(work: Path, docs: Path, results: dict) -> list[Path]:
    """The explorer on the default prompt with the region feature selected, and the swap chart."""
    model = circuit_atlas.load("demo", "demo")
    tops = results["top_features_last_positions"]
    region = next((f for f in tops if "texas" in f["label"]), tops[0])
    node_id = f"{region['layer']}_{region['feature']}_{region['position']}"
    with FeatureStore(work / "features") as store:
        shot = explorer_screenshot(work / "graphs", docs / "img" / "two-hop-explorer.png",
                                   slug=default_slug(results["prompt"]), node_id=node_id,
                                   features=store, model=model, pin_neighbours=5)
    title = (f"answer becomes the swap region's capital ({results['held_out_questions']} "
             "held-out questions)")
    chart = bar_chart_png(docs / "img" / "two-hop-swap.png", title,
                          [("swap (suppress + inject)", results["rates"]["swap"]),
                           ("suppress only", results["rates"]["suppress_only"]),
                           ("inject only", results["rates"]["inject_only"])])
    return [shot, chart]


def summary(results: dict) -> str:
    rates = {k: results[k] for k in ("clean_accuracy", "rates", "answer_changed")}
    return results["summary_text"] + "\n" + json.dumps(rates, indent=1)


def main(argv=None) -> int:
    return run_case_study(argv, description=__doc__.split("\n\n")[0],
                          results_name="two-hop-results.json", work_prefix="demo-case-study-",
                          measure=measure, figures=figures, summary=summary)


if __name__ == "__main__":
    sys.exit(main())
