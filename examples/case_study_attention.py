#!/usr/bin/env python
"""Measure the attention case study on the bundled demo and take its figures.

    python examples/case_study_attention.py [--work DIR] [--docs docs/case-studies] [--no-screenshots]

Writes `<docs>/attention-results.json` (every figure the attention section of
docs/case-studies.md quotes: the reader feature of "the capital of the region containing dallas
is" and its inputs, the edge from the city split over heads with `edge_heads`, the QK
explanation of every key of the prompt with `qk_attribution`, the vocabulary sweeps of the key and
query side, the head tables of all 48 held-out questions, and the key edits with their controls,
per question) and, unless --no-screenshots, PNGs through Playwright and /usr/bin/chromium: the
explorer with its attention panel on the edge " dallas" -> the texas feature, head L0.H0
(`explorer_figure`), and bar charts of the heads carrying the edge, the query and key sweeps,
and the edits.
About a minute on one CPU thread.
"""

from __future__ import annotations

import dataclasses
import sys
from collections import Counter
from pathlib import Path

import torch

import circuit_atlas
from circuit_atlas.attribution.qk import QKExplainer
from circuit_atlas.attribution import explain_graph_attention
from circuit_atlas.cli.demo import copy_features
from circuit_atlas.cli.trace import default_slug
from circuit_atlas.demo import bundle
from circuit_atlas.features import FeatureStore
from circuit_atlas.graph.bundle import write_graph_bundle

from case_studies import attention as at
from case_studies.cli import run_case_study
from case_studies.codes import answer_word, first_token_id
from case_studies.figures import bar_chart_png, explorer_screenshot

SEEDS = range(5)  # random vectors per question in the random controls
TOP_TOKENS = 10


def _r(x: float) -> float:
    return round(float(x), 4)


def default_section(model, item, labels: dict) -> tuple[dict, object, list[int]]:
    """The default prompt: the reader feature, its inputs, the heads carrying the edge from the
    city and the QK explanations of every key of the prompt for the top two heads; also the
    clean run and the heads, most carrying first."""
    graph = circuit_atlas.attribute(model, item.prompt, progress=False)
    edge = at.reader_edge(model, item, graph=graph)
    target = graph.node_index(edge.feature)
    inputs = graph.adjacency[graph.storage_row(target), :graph.n_sources]
    strongest = sorted(range(graph.n_sources), key=lambda c: -abs(float(inputs[c])))[:5]
    explainer = QKExplainer(model, item.prompt)
    ranked = edge.ranked_heads()
    return {
        "prompt": item.prompt,
        "tokens": graph.tokens,
        "reader_feature": edge.feature,
        "reader_label": labels.get((at.LAYER, edge.feature_index), ""),
        "reader_inputs": [[graph.node_id(c), graph.node_label(c), _r(inputs[c])]
                          for c in strongest],
        "edge": edge.heads.to_json(),
        "shares": {f"L0.H{h}": _r(edge.share(h)) for h in ranked},
        "qk": {f"L0.H{h}": explainer.explain(at.LAYER, h, at.QUERY, at.CITY).to_json(top=4)
               for h in ranked[:2]},
        "prompt_keys": {f"L0.H{h}": [{k: (_r(v) if isinstance(v, float) else v)
                                      for k, v in dataclasses.asdict(row).items()}
                                     for row in at.prompt_keys(explainer, h)]
                        for h in ranked[:2]},
    }, explainer.run, ranked


def _tokens(model, ids) -> list[str]:
    return [answer_word(t) or t for t in model.tokenizer.convert_ids_to_tokens(list(ids))]


def sweep_section(model, run, world, heads) -> dict:
    """Key sweep (which tokens the " is" query scores high at the city position) and query sweep
    (which last tokens make the head attend to the city), per head."""
    frame = sorted({int(t) for t in run.tokens[:at.CITY]})
    held = [first_token_id(model, c) for c in world.held_out_cities]
    training = [first_token_id(model, c) for c in world.training_cities]
    cities = set(held) | set(training)
    others = [i for i in range(model.lm.vocab_size) if i not in cities and i not in frame]
    result = {"frame_tokens": _tokens(model, frame)}
    for head in heads:
        keys = at.key_sweep(model, run, head)
        queries = at.query_sweep(model, run, head)
        key_order = torch.argsort(keys, descending=True).tolist()
        query_order = torch.argsort(queries, descending=True).tolist()
        is_id = int(run.tokens[at.QUERY])
        result[f"L0.H{head}"] = {
            "key_percentile": {"frame tokens": _r(at.percentile(keys, frame)),
                               "held-out cities": _r(at.percentile(keys, held)),
                               "training cities": _r(at.percentile(keys, training)),
                               "other tokens": _r(at.percentile(keys, others))},
            "key_median_score": {"frame tokens": _r(keys[frame].median()),
                                 "held-out cities": _r(keys[held].median()),
                                 "training cities": _r(keys[training].median()),
                                 "other tokens": _r(keys[others].median())},
            "key_top": [[t, _r(keys[i])] for t, i in
                        zip(_tokens(model, key_order[:TOP_TOKENS]), key_order)],
            "cities_in_key_top_160": sum(i in cities for i in key_order[:len(cities)]),
            "query_top": [[t, _r(queries[i])] for t, i in
                          zip(_tokens(model, query_order[:TOP_TOKENS]), query_order)],
            "query_is_rank": query_order.index(is_id),
            "query_is_weight": _r(queries[is_id]),
            "query_median_weight": _r(queries.median()),
            "vocabulary": model.lm.vocab_size,
        }
    return result


def heads_section(edges: list[at.ReaderEdge], labels: dict) -> dict:
    n_heads = edges[0].heads.contributions.shape[1]
    return {
        "questions": len(edges),
        "top_head_counts": {f"L0.H{h}": n for h, n in
                            sorted(Counter(e.top_head for e in edges).items())},
        "mean_share": {f"L0.H{h}": _r(sum(e.share(h) for e in edges) / len(edges))
                       for h in range(n_heads)},
        "all_in_layer_0": all(row.layer == at.LAYER for e in edges for row in e.heads.rows),
        "label_names_the_region": sum(e.item.region in labels.get((at.LAYER, e.feature_index), "")
                                      for e in edges),
        "per_question": [{"city": e.item.city, "region": e.item.region, "feature": e.feature,
                          "label": labels.get((at.LAYER, e.feature_index), ""),
                          "edge": _r(e.heads.edge), "top_head": e.top_head,
                          "shares": [_r(e.share(h)) for h in range(n_heads)]} for e in edges],
    }


def constrained_check(model, questions: list[at.Question]) -> dict:
    """Largest difference between the top head's score at the city after a key edit and the
    score predicted without running the edit: 0 when the key sees nothing (no q/k biases), the
    key sweep's value for the frame word or the other city otherwise."""
    worst = {}
    for sees in ("nothing", "frame", "other_city"):
        condition = at.Condition(sees, ("top",), sees)
        gaps = []
        for q in questions:
            sweep = at.key_sweep(model, q.run, q.edge.top_head)
            token = {"nothing": None, "frame": int(q.tokens[at.NEIGHBOUR]),
                     "other_city": first_token_id(model, q.other_city)}[sees]
            predicted = 0.0 if token is None else float(sweep[token])
            edited = q.edit(model, condition).edited.city_scores[q.edge.top_head]
            gaps.append(abs(edited - predicted))
        worst[sees] = max(gaps)
    return worst


def edits_section(model, questions: list[at.Question]) -> dict:
    result = {"clean_correct": sum(q.clean.answer == q.item.answer for q in questions),
              "questions": len(questions), "seeds": len(SEEDS),
              "max_score_gap_to_prediction": constrained_check(model, questions),
              "conditions": {}}
    per_question = {q.item.city: {"clean": q.clean.answer, "answer": q.item.answer,
                                  "top_head": q.edge.top_head,
                                  "clean_weight": _r(q.clean.weight(q.edge.top_head)),
                                  "clean_feature": _r(q.clean.feature), "edited": {}}
                    for q in questions}
    for condition in at.conditions():
        outcomes = at.run_condition(model, questions, condition, seeds=SEEDS)
        result["conditions"][condition.name] = {
            "heads": list(condition.heads), "sees": condition.sees,
            "position": condition.position,
            **{k: _r(v) for k, v in at.rates(outcomes, condition.position).items()},
            "answers": dict(Counter(o.edited.answer for o in outcomes).most_common())}
        if not condition.random:
            for o in outcomes:
                per_question[o.item.city]["edited"][condition.name] = {
                    "answer": o.edited.answer, "weight_ratio": _r(o.weight_ratio),
                    "feature_ratio": _r(o.feature_ratio),
                    "score": _r(o.edited.city_scores[o.head])}
    result["per_question"] = list(per_question.values())
    return result


def measure(work: Path) -> dict:
    model = circuit_atlas.load("demo", "demo")
    features_dir = copy_features(bundle.demo_features_path("clt"), work / "features")
    with FeatureStore(features_dir) as store:
        labels = store.labels()
    world = bundle.demo_world()
    items = bundle.two_hop_eval_items()
    default, run, ranked = default_section(model, bundle.default_two_hop_item(), labels)
    edges = [at.reader_edge(model, item) for item in items]
    others = at.other_cities(world, items)
    questions = [at.Question.build(model, edge, others[edge.item.city]) for edge in edges]
    return {"default": default,
            "sweeps": sweep_section(model, run, world, ranked[:2]),
            "heads": heads_section(edges, labels),
            "edits": edits_section(model, questions)}


SHORT = {
    "key at the city sees a frame word (' containing')": "city key = ' containing'",
    "key at the city sees nothing of the city token": "city key = nothing",
    "control: key sees another held-out city": "control: other city",
    "control: random vector (city embedding's norm) added": "control: random vector",
    "control: frame-word edit on the non-carrying heads": "control: other heads",
    "frame-word edit on both carrying heads": "' containing', both heads",
    "key at ' containing' sees the city": "' containing' key = city",
    "control: random vector added at ' containing'": "control: random there",
}


EXPLORER_EDGE = ("E_127_7", "0_479_8")  # " dallas" @7 -> the texas feature L0 #479 at " is" @8
EXPLORER_HEAD = "0.0"


def explorer_figure(work: Path, path: Path) -> Path:
    """The explorer on the default question, its attention explanations precomputed as
    `circuit-atlas attention GRAPH --precompute` stores them, with the attention panel open on
    the edge city -> reader feature and head L0.H0 chosen."""
    model = circuit_atlas.load("demo", "demo")
    features_dir = copy_features(bundle.demo_features_path("clt"), work / "features")
    graph = circuit_atlas.attribute(model, bundle.DEFAULT_PROMPT, progress=False)
    attention = explain_graph_attention(model, graph, progress=False)
    slug = default_slug(bundle.DEFAULT_PROMPT)
    with FeatureStore(features_dir) as store:
        write_graph_bundle(graph, work / "graphs", slug, labels=store.labels(), attention=attention)
        return explorer_screenshot(work / "graphs", path, slug=slug, node_id=EXPLORER_EDGE[1],
                                   features=store, attention=(EXPLORER_EDGE[0], EXPLORER_HEAD))


def figures(work: Path, docs: Path, results: dict) -> list[Path]:
    """The explorer's attention panel, and bar charts: the heads carrying the edge, the query /
    key sweeps and the edits."""
    img = docs / "img"
    heads = results["heads"]
    n = heads["questions"]
    paths = [explorer_figure(work, img / "attention-explorer.png")]
    paths += [bar_chart_png(img / "attention-heads.png",
                           f"share of the edge city -> reader feature ({n} questions)",
                           [(h, v if v > 0 else 0.0) for h, v in heads["mean_share"].items()])]
    top = next(iter(results["default"]["shares"]))
    sweep = results["sweeps"][top]
    paths.append(bar_chart_png(
        img / "attention-query-sweep.png",
        f"{top}'s weight on the city, by last token (top {TOP_TOKENS})",
        [(f"'{t}'", w) for t, w in sweep["query_top"]]))
    paths.append(bar_chart_png(
        img / "attention-key-sweep.png",
        f"{top}: score percentile of words put at the city",
        [(name, p / 100) for name, p in sweep["key_percentile"].items()]))
    conditions = results["edits"]["conditions"]
    for measure_name, file, title in (
            ("feature_lost", "attention-edits-feature.png",
             f"reader feature below half ({n} held-out questions)"),
            ("answer_lost", "attention-edits-answer.png",
             f"answer not the capital ({n} held-out questions)")):
        paths.append(bar_chart_png(img / file, title,
                                   [(SHORT.get(name, name), row[measure_name])
                                    for name, row in conditions.items()]))
    return paths


def summary(results: dict) -> str:
    default = results["default"]
    lines = [f"{default['prompt']!r}: reader feature {default['reader_feature']} "
             f"({default['reader_label']}); head shares {default['shares']}",
             f"top heads over {results['heads']['questions']} held-out questions: "
             f"{results['heads']['top_head_counts']}"]
    for name, row in results["edits"]["conditions"].items():
        lines.append(f"  {name:<55} attention lost {row['attention_lost']:.3f}  feature lost "
                     f"{row['feature_lost']:.3f}  answer lost {row['answer_lost']:.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    return run_case_study(argv, description=__doc__.split("\n\n")[0],
                          results_name="attention-results.json", work_prefix="demo-attention-",
                          measure=measure, figures=figures, summary=summary)


if __name__ == "__main__":
    sys.exit(main())
