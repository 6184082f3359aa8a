#!/usr/bin/env python
"""Measure the multilingual case study on the bundled demo and take its figures.

    python examples/case_study_multilingual.py [--work DIR] [--docs docs/case-studies] [--no-screenshots]

Writes `<docs>/multilingual-results.json` (every figure docs/case-studies/multilingual.md quotes:
the graph of the held-out question "le contraire de petit est", the model's answers to the
held-out questions, feature sharing across languages per layer, the measured pole orientation,
the language features at the word position, the cross-language swap with its controls, per
question, and the held-out questions decoded from codes of other languages) and, unless
--no-screenshots, PNGs taken with Playwright and /usr/bin/chromium (headless): the explorer on the
held-out question with a shared feature selected, a bar chart of the sharing and one of the swap.
About 75 s on one CPU thread.
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

from case_studies import multilingual as ml
from case_studies.cli import run_case_study
from case_studies.figures import bar_chart_png, explorer_screenshot


DEFAULT_WORD = ml.Word(1, 1, "french")  # petit: "le contraire de petit est" -> grand (held out)
SHORT = {"english": "en", "french": "fr", "spanish": "es"}


def _r(x: float) -> float:
    return round(float(x), 4)


def graph_section(model, work: Path, labels: dict, codes: dict, orient: dict) -> dict:
    """Attribution graph of the default held-out question, its largest nodes of every kind and
    whether its top features belong to the code measured on the other two languages."""
    prompt = DEFAULT_WORD.question
    t0 = time.perf_counter()
    graph = circuit_atlas.attribute(model, prompt, progress=False)
    seconds = time.perf_counter() - t0
    write_graph_bundle(graph, work / "graphs", default_slug(prompt), labels=labels)
    scores = graph_scores(graph)
    influence = node_influence(graph)
    coords = graph.feature_coords
    last = graph.n_positions - 1
    code = codes[(DEFAULT_WORD.row, ml.pole(DEFAULT_WORD, orient))]
    code_sites = ml.code_site_set(code)
    top = sorted((i for i in range(graph.n_selected) if int(coords[i, 1]) == last),
                 key=lambda i: -float(influence[i]))[:8]
    nodes = [{"node": graph.node_label(n), "influence": _r(influence[n])}
             for n in sorted(range(graph.n_sources), key=lambda n: -float(influence[n]))[:12]]
    edges = {}
    for i in top[:3]:
        layer, _, feature = (int(v) for v in coords[i])
        incoming = graph.adjacency[i, :graph.n_sources]
        strongest = sorted(range(graph.n_sources), key=lambda c: -abs(float(incoming[c])))[:3]
        edges[f"L{layer} #{feature}"] = {
            "inputs": [[graph.node_label(c), _r(incoming[c])] for c in strongest],
            "to_top_logit": _r(graph.adjacency[graph.n_selected, i])}
    return {
        "prompt": prompt,
        "answer": DEFAULT_WORD.opposite.text,
        "trace_seconds": round(seconds, 2),
        "active_features": int(graph.active_features.shape[0]),
        "replacement_score": _r(scores.replacement),
        "completeness_score": _r(scores.completeness),
        "top_logits": [[t, _r(p)] for t, p in
                       zip(graph.logit_tokens[:3], graph.logit_probabilities.tolist())],
        "largest_nodes": nodes,
        "edges_of_top_features": edges,
        "top_features_final_position": [
            {"layer": int(coords[i, 0]), "position": int(coords[i, 1]),
             "feature": int(coords[i, 2]),
             "influence": _r(influence[i]),
             "label": labels.get((int(coords[i, 0]), int(coords[i, 2])), ""),
             "in_code_from_other_languages": (int(coords[i, 0]), int(coords[i, 2])) in code_sites}
            for i in top],
        "code_from_other_languages": {f"L{layer}": {str(f): _r(v) for f, v in feats.items()}
                                      for (layer, _), feats in code.features.items() if feats},
        "summary_text": top_features_text(graph, labels),
    }


def reversal_per_pair(sets: dict) -> dict:
    """In how many of the 15 pairs each language pair shares more with the translation of the
    opposite word than with the translation itself."""
    result = {}
    for i, a in enumerate(ml.LANGUAGES):
        for b in ml.LANGUAGES[i + 1:]:
            reversed_in = 0
            for row in range(ml.N_PAIRS):
                s = ml.sharing({w: v for w, v in sets.items() if w.row == row}, a, b)
                reversed_in += s.opposite_meaning > s.same_meaning
            result[f"{a}-{b}"] = {"pairs": ml.N_PAIRS, "reversed": reversed_in}
    return result


def word_position_section(model, labels: dict) -> dict:
    """Features at the word position of the questions: the language-specific ones and every
    feature frequent (>= 90 %) in some language, with rates per language."""
    rates = ml.language_rates(model, ml.all_words())

    def row(site):
        layer, feature = site
        return {"layer": layer, "feature": feature, "label": labels.get(site, ""),
                "rates": {SHORT[k]: _r(v) for k, v in rates[site].items()}}

    specific = ml.language_features(rates)
    return {"language_specific": {lang: [row(s) for s in sites]
                                  for lang, sites in specific.items()},
            "frequent": [row(s) for s, per in rates.items() if max(per.values()) >= 0.9]}


def answers_section(model, world) -> dict:
    """The model's answer to every opposite question, and the held-out ones in detail."""
    held = set(ml.held_out_words(world))
    per_language = {}
    for language in ml.LANGUAGES:
        words = ml.all_words([language])
        right = [ml.top_answer(model, w.question)[0] == w.opposite.text for w in words]
        per_language[language] = {"questions": len(words), "correct": sum(right)}
    held_out = []
    for word in sorted(held):
        top, p = ml.top_answer(model, word.question)
        held_out.append({"prompt": word.question, "answer": word.opposite.text, "top": top,
                         "p_top": _r(p), "correct": top == word.opposite.text})
    return {"per_language": per_language, "held_out": held_out,
            "held_out_correct": sum(h["correct"] for h in held_out)}


def sharing_section(sets: dict, at_word: dict) -> dict:
    """Overlap per language pair: all layers, per layer, on the questions alone (the translation
    prompts left out), and at the word position of the questions."""
    questions = {word: found[:1] for word, found in sets.items()}
    result = {}
    for i, a in enumerate(ml.LANGUAGES):
        for b in ml.LANGUAGES[i + 1:]:
            rows = {"all layers": ml.sharing(sets, a, b),
                    "questions only": ml.sharing(questions, a, b),
                    "word position": ml.sharing(at_word, a, b)}
            rows |= {f"L{layer}": ml.sharing(sets, a, b, layers=[layer])
                     for layer in ml.CODE_LAYERS}
            result[f"{a}-{b}"] = {name: {"same_meaning": _r(s.same_meaning),
                                         "opposite_meaning": _r(s.opposite_meaning),
                                         "other_pair": _r(s.other_pair)}
                                  for name, s in rows.items()}
    return result


def failure_kind(outcome: ml.SwapOutcome) -> str:
    """Where a failed swap's answer came from."""
    words = {w.text: w for w in ml.all_words()}
    found = words.get(outcome.swapped_top)
    if found is None:
        return "not an opposites word"
    if found.language != outcome.word.language:
        return "opposites word of another language"
    if found.row == outcome.donor.row:
        return "donor pair, wrong word"
    if found.row == outcome.word.row:
        return "original pair"
    return "third pair, question's language"


def code_sizes(codes_by_language: dict) -> dict:
    """Mean number of features per concept code, per layer and in all."""
    codes = [c for per in codes_by_language.values() for c in per.values()]
    per_layer = {f"L{layer}": _r(sum(len(c.features.get((layer, -1), {})) for c in codes)
                                 / len(codes))
                 for layer in ml.CODE_LAYERS}
    uses: dict = {}
    for code in codes:
        for layer, feature in ml.code_site_set(code):
            uses[f"L{layer} #{feature}"] = uses.get(f"L{layer} #{feature}", 0) + 1
    most = sorted(uses.items(), key=lambda kv: -kv[1])[:5]
    return {"codes": len(codes), "mean_features": _r(sum(c.size() for c in codes) / len(codes)),
            "min": min(c.size() for c in codes), "max": max(c.size() for c in codes), **per_layer,
            "most_used_features": dict(most)}


def swap_section(model, orient: dict, world, codes_by_language: dict) -> dict:
    """The swap and its controls per language, per question; all donors; a stricter share."""
    meaning = {language: 0 for language in ml.LANGUAGES}
    conditions = {"swap": {}, "suppress_only": {"inject": False},
                  "inject_only": {"suppress": False}}
    held = set(ml.held_out_words(world))
    rates, per_question, all_donors, strict, held_outcomes, failures = {}, [], {}, {}, [], {}
    for language in ml.LANGUAGES:
        codes = codes_by_language[language]
        runs = {name: ml.swap_language(model, language, codes, orient, **opts)
                for name, opts in conditions.items()}
        by_meaning = ml.codes_without(model, language, orient, grouping=meaning)
        runs["codes_by_meaning"] = ml.swap_language(model, language, by_meaning, orient)
        rates[language] = {name: {k: _r(v) for k, v in ml.rates(out).items()}
                           for name, out in runs.items()}
        held_outcomes += [o for o in runs["swap"] if o.word in held]
        kinds = [failure_kind(o) for o in runs["swap"] if not o.swapped]
        failures[language] = {k: kinds.count(k) for k in sorted(set(kinds))}
        every = [o for step in range(1, ml.N_PAIRS)
                 for o in ml.swap_language(model, language, codes, orient, step=step)]
        all_donors[language] = {"swaps": len(every),
                                **{k: _r(v) for k, v in ml.rates(every).items()}}
        stricter = ml.codes_without(model, language, orient, share=0.8)
        strict_outcomes = ml.swap_language(model, language, stricter, orient)
        strict[language] = _r(ml.rates(strict_outcomes)["swapped"])
        for o, s, j, m in zip(*(runs[n] for n in ("swap", "suppress_only", "inject_only",
                                                   "codes_by_meaning"))):
            per_question.append({
                "prompt": o.word.question, "held_out": o.word in held, "clean": o.clean_top,
                "donor": o.donor.text, "expected": o.expected, "swapped": o.swapped_top,
                "p_expected": _r(o.p_expected), "suppressed": o.n_suppressed,
                "injected": o.n_injected, "suppress_only": s.swapped_top,
                "inject_only": j.swapped_top, "codes_by_meaning": m.swapped_top})
    return {"code_layers": list(ml.CODE_LAYERS), "code_share": ml.CODE_SHARE,
            "code_sizes": code_sizes(codes_by_language), "rates": rates, "failures": failures,
            "held_out": {"questions": len(held_outcomes),
                         **{k: _r(v) for k, v in ml.rates(held_outcomes).items()}},
            "all_donors": all_donors, "swapped_with_share_0.8": strict,
            "per_question": per_question}


def decode_section(model, orient: dict, world, codes_by_language: dict) -> dict:
    words = ml.all_words()
    decoded = ml.decode_words(model, words, orient, codes=codes_by_language)
    held = ml.held_out_words(world)

    def name(key):
        return "/".join(w.text for w in ml.pole_words(key[0], key[1], orient))

    return {
        "questions": len(words),
        "pair_correct": sum(k[0] == w.row for w, k in decoded.items()),
        "pair_and_pole_correct": sum(k == (w.row, ml.pole(w, orient)) for w, k in decoded.items()),
        "held_out": [{"prompt": w.question, "decoded_as": name(decoded[w]),
                      "correct": decoded[w] == (w.row, ml.pole(w, orient))} for w in held],
    }


def measure(work: Path) -> dict:
    model = circuit_atlas.load("demo", "demo")
    world = bundle.demo_world()
    features_dir = copy_features(bundle.demo_features_path("clt"), work / "features")
    with FeatureStore(features_dir) as store:
        labels = store.labels()
    sets = ml.feature_sets(model, ml.all_words())
    orient = ml.orientation(sets)
    codes = {language: ml.codes_without(model, language, orient) for language in ml.LANGUAGES}
    return {
        "graph": graph_section(model, work, labels, codes[DEFAULT_WORD.language], orient),
        "answers": answers_section(model, world),
        "sharing": sharing_section(sets, ml.question_sets(model, ml.all_words(),
                                                          position=ml.WORD_POSITION)),
        "orientation": orient,
        "reversal_per_pair": reversal_per_pair(sets),
        "word_position": word_position_section(model, labels),
        "swap": swap_section(model, orient, world, codes),
        "decode": decode_section(model, orient, world, codes),
    }


def figures(work: Path, docs: Path, results: dict) -> list[Path]:
    """The explorer on the held-out question with a shared feature selected; two bar charts."""
    model = circuit_atlas.load("demo", "demo")
    graph = results["graph"]
    shared = next((f for f in graph["top_features_final_position"]
                   if f["in_code_from_other_languages"]), graph["top_features_final_position"][0])
    node_id = f"{shared['layer']}_{shared['feature']}_{shared['position']}"
    with FeatureStore(work / "features") as store:
        shot = explorer_screenshot(work / "graphs", docs / "img" / "multilingual-explorer.png",
                                   slug=default_slug(graph["prompt"]), node_id=node_id,
                                   features=store, model=model, pin_neighbours=5)
    rows = []
    for pair, table in results["sharing"].items():
        a, b = (SHORT[x] for x in pair.split("-"))
        overall = table["all layers"]
        rows += [(f"{a}-{b} same meaning", overall["same_meaning"]),
                 (f"{a}-{b} opposite meaning", overall["opposite_meaning"]),
                 (f"{a}-{b} other pairs", overall["other_pair"])]
    sharing = bar_chart_png(docs / "img" / "multilingual-sharing.png",
                            "feature overlap (Jaccard) at the final position, all layers", rows)
    rates = results["swap"]["rates"]
    swap_rows = [(f"swap, {lang} questions", rates[lang]["swap"]["swapped"])
                 for lang in ml.LANGUAGES]
    for name, title in (("suppress_only", "suppress only"), ("inject_only", "inject only"),
                        ("codes_by_meaning", "codes grouped by meaning")):
        mean = sum(rates[lang][name]["swapped"] for lang in ml.LANGUAGES) / len(ml.LANGUAGES)
        swap_rows.append((f"{title} (all)", mean))
    swap = bar_chart_png(docs / "img" / "multilingual-swap.png",
                         "answer = opposite of the injected word, codes from the other languages",
                         swap_rows)
    return [shot, sharing, swap]


def summary(results: dict) -> str:
    key = {"orientation": results["orientation"],
           "swap": {lang: r["swap"]["swapped"] for lang, r in results["swap"]["rates"].items()},
           "held_out_correct": results["answers"]["held_out_correct"]}
    return results["graph"]["summary_text"] + "\n" + json.dumps(key, indent=1)


def main(argv=None) -> int:
    return run_case_study(argv, description=__doc__.split("\n\n")[0],
                          results_name="multilingual-results.json", work_prefix="case-study-multilingual-",
                          measure=measure, figures=figures, summary=summary)


if __name__ == "__main__":
    sys.exit(main())
