"""The multilingual case study: features shared by english, french and spanish, found by the tools.

Unit tests check the measuring functions on planted feature sets whose overlaps are known in
closed form. The tests on the bundled model check the claims of docs/case-studies/multilingual.md:

1. At the final position ("is" / "est" / "es") the prompts about one word share several times more
   features with prompts of another language about the same pair than with prompts about other
   pairs, on every language pair.
2. French and spanish words share features with their translations, english words with the
   translation of their *opposite*: the measured orientation reverses english.
3. At the word position, features say which language the word is in (english, spanish).
4. The graph of the held-out question "le contraire de petit est" runs through the features of
   the code measured on english and spanish prompts alone.
5. Injecting another pair's code (measured on the two other languages only) after suppressing the
   true one turns the answer into the opposite of the injected word, in the question's language,
   far above the controls (suppression alone, codes grouped by dictionary meaning).
6. Held-out questions' final positions decode to their pair and pole from those codes.
"""

from __future__ import annotations

import itertools

import pytest

import circuit_atlas
from circuit_atlas.demo import bundle, lexicon
from circuit_atlas.demo.toyworld import generate_corpus
from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.graph import node_influence

from case_studies import multilingual as ml
from case_studies.codes import FeatureCode, measure_code

REVERSED_EN = {"english": 0, "french": 1, "spanish": 1}


# ---------------------------------------------------------------------------------------------
# Words and prompts.


def test_held_out_words_are_the_training_scripts_held_out_questions():
    words = ml.held_out_words(bundle.demo_world())
    items = bundle.multilingual_eval_items()
    assert sorted((w.question, w.opposite.text) for w in words) == sorted(
        (i.prompt, i.answer) for i in items)


def test_translation_prompts_are_training_contexts():
    world = bundle.demo_world()
    lines = set(generate_corpus(world, 6000, seed=1, mix={"translation": 1.0}))
    for word in ml.all_words():
        targets = ([word.translated(l) for l in ml.LANGUAGES[1:]] if word.language == "english"
                   else [word.translated("english")])
        for prompt, target in zip(word.translation_prompts, targets, strict=True):
            assert f"{prompt} {target.text}" in lines


def test_word_rejects_bad_fields():
    for args in ((15, 0, "english"), (0, 2, "english"), (0, 0, "german"), (-1, 0, "french")):
        with pytest.raises(CircuitAtlasError):
            ml.Word(*args)


def test_pole_words_invert_pole():
    for word in ml.all_words():
        members = ml.pole_words(word.row, ml.pole(word, REVERSED_EN), REVERSED_EN)
        assert word in members and len(members) == len(ml.LANGUAGES)
    # under the reversed orientation, english "big" shares its pole with french "petit"
    big = ml.Word(1, 0, "english")
    assert [w.text for w in ml.pole_words(1, ml.pole(big, REVERSED_EN), REVERSED_EN)] == [
        "big", "petit", "pequeno"]


# ---------------------------------------------------------------------------------------------
# Measuring functions on planted sets.


def _planted(flipped: set[str], noise: int) -> dict:
    """Each word's one prompt fires its pole feature (layer 0) plus `noise` private features
    (layer 1); `flipped` languages put each word on the other pole."""
    counter = itertools.count(1000)
    sets = {}
    for word in ml.all_words():
        pole = word.side ^ (word.language in flipped)
        private = {(1, next(counter)) for _ in range(noise)}
        sets[word] = [frozenset({(0, 100 + 2 * word.row + pole)} | private)]
    return sets


def test_sharing_matches_closed_form_on_planted_sets():
    noise = 3
    sets = _planted({"english"}, noise)
    # translations (fr-es) share the pole feature: |A∩B| = 1, |A∪B| = 1 + 2·noise
    fr_es = ml.sharing(sets, "french", "spanish")
    assert fr_es.same_meaning == pytest.approx(1 / (1 + 2 * noise))
    assert fr_es.opposite_meaning == 0 and fr_es.other_pair == 0
    # english is reversed: its words share the pole with the *opposite* foreign word
    en_fr = ml.sharing(sets, "english", "french")
    assert en_fr.same_meaning == 0
    assert en_fr.opposite_meaning == pytest.approx(1 / (1 + 2 * noise))
    assert en_fr.ratio() == float("inf")
    # restricted to the noise layer nothing is shared
    assert ml.sharing(sets, "english", "french", layers=[1]).opposite_meaning == 0
    # restricted to the pole layer the sets are identical when shared
    assert ml.sharing(sets, "english", "french", layers=[0]).opposite_meaning == 1


def test_sharing_pools_prompt_pairs():
    a, b = ml.Word(0, 0, "english"), ml.Word(0, 0, "french")
    sets = {a: [frozenset({(0, 1), (0, 2)}), frozenset({(0, 3)})], b: [frozenset({(0, 1)})]}
    # pairs: {1,2}&{1}: 1/2 ; {3}&{1}: 0/2  -> pooled 1/4 (a mean of ratios would give 1/4 too,
    # so add a third, unequal pair)
    sets[a].append(frozenset({(0, 1), (0, 4), (0, 5), (0, 6)}))  # 1/4
    assert ml.sharing(sets, "english", "french").same_meaning == pytest.approx(2 / 8)
    with pytest.raises(CircuitAtlasError, match="two different languages"):
        ml.sharing(sets, "french", "french")
    with pytest.raises(CircuitAtlasError, match="no translated words"):
        ml.sharing(sets, "english", "spanish")


@pytest.mark.parametrize("flipped, expected", [
    ({"english"}, {"english": 0, "french": 1, "spanish": 1}),
    (set(), {"english": 0, "french": 0, "spanish": 0}),
    ({"spanish"}, {"english": 0, "french": 0, "spanish": 1}),
])
def test_orientation_finds_the_planted_reversal(flipped, expected):
    assert ml.orientation(_planted(flipped, noise=2)) == expected


def test_language_features_rule():
    rates = {(1, 5): {"english": 1.0, "french": 0.0, "spanish": 0.05},
             (1, 6): {"english": 0.95, "french": 0.2, "spanish": 0.0},  # french too often
             (0, 7): {"english": 0.0, "french": 0.9, "spanish": 0.1},
             (0, 8): {"english": 0.0, "french": 0.85, "spanish": 0.0}}  # not often enough
    assert ml.language_features(rates) == {"english": [(1, 5)], "french": [(0, 7)]}


def test_nearest_concept_picks_the_largest_jaccard():
    codes = {(0, 0): FeatureCode("a", 3, {(0, -1): {1: 1.0, 2: 1.0}, (1, -1): {}}),
             (0, 1): FeatureCode("b", 3, {(0, -1): {3: 1.0}, (1, -1): {4: 1.0}}),
             (1, 0): FeatureCode("c", 3, {(0, -1): {1: 1.0, 2: 1.0, 3: 1.0, 9: 1.0}})}
    assert ml.nearest_concept(frozenset({(0, 3), (1, 4)}), codes) == (0, 1)
    assert ml.nearest_concept(frozenset({(0, 1), (0, 2)}), codes) == (0, 0)
    assert ml.nearest_concept(frozenset({(0, 1), (0, 2), (0, 3)}), codes) == (1, 0)
    with pytest.raises(CircuitAtlasError):
        ml.nearest_concept(frozenset(), {})


# ---------------------------------------------------------------------------------------------
# The bundled model.


@pytest.fixture(scope="module")
def sets(model):
    return ml.feature_sets(model, ml.all_words())


@pytest.fixture(scope="module")
def orient(sets):
    return ml.orientation(sets)


@pytest.fixture(scope="module")
def codes(model, orient):
    return {language: ml.codes_without(model, language, orient) for language in ml.LANGUAGES}


def test_final_position_features_are_shared_across_languages(sets):
    questions = {w: s[:1] for w, s in sets.items()}
    for a, b in itertools.combinations(ml.LANGUAGES, 2):
        for measured in (sets, questions):
            s = ml.sharing(measured, a, b)
            assert s.ratio() >= 3, f"{a}-{b}: {s}"


def test_english_is_reversed_relative_to_french_and_spanish(sets, orient):
    assert orient == REVERSED_EN
    # consistent with the direct french-spanish comparison: translations share, opposites do not
    fr_es = ml.sharing(sets, "french", "spanish")
    assert fr_es.same_meaning > 3 * fr_es.opposite_meaning


def test_word_position_features_name_the_language_not_the_word(model):
    found = ml.language_features(ml.language_rates(model, ml.all_words()))
    assert found.get("english") and found.get("spanish"), found
    # translations share no more features there than words of different pairs
    at_word = ml.question_sets(model, ml.all_words(), position=ml.WORD_POSITION)
    for a, b in itertools.combinations(ml.LANGUAGES, 2):
        s = ml.sharing(at_word, a, b)
        assert max(s.same_meaning, s.opposite_meaning) <= 1.5 * s.other_pair, s


def test_graph_of_held_out_question_runs_through_the_shared_code(model, orient, codes):
    word = ml.Word(1, 1, "french")  # petit: held out
    assert word in ml.held_out_words(bundle.demo_world())
    graph = circuit_atlas.attribute(model, word.question, progress=False)
    assert graph.logit_tokens[0].strip() == "grand"
    influence = node_influence(graph)[:graph.n_selected]
    coords = graph.feature_coords
    last = graph.n_positions - 1
    top = sorted((i for i in range(graph.n_selected) if int(coords[i, 1]) == last),
                 key=lambda i: -float(influence[i]))[:3]
    code = codes["french"][(word.row, ml.pole(word, orient))]
    code_sites = ml.code_site_set(code)
    inside = [(int(coords[i, 0]), int(coords[i, 2])) in code_sites for i in top]
    assert sum(inside) >= 2, (top, code.features)


def test_codes_without_rekeys_a_meaning_grouping(model, orient):
    """The control's codes: grouped by dictionary meaning, measured here from prompts written out
    independently, and found under the pole of the french word with that meaning."""
    meaning = {language: 0 for language in ml.LANGUAGES}
    keyed = ml.codes_without(model, "french", orient, grouping=meaning)
    row, side = 4, 0  # good / bon / bueno
    en, es = lexicon.OPPOSITES[row][0][side], lexicon.OPPOSITES[row][2][side]
    prompts = [f"the opposite of {en} is", f"{en} in french is", f"{en} in spanish is",
               f"lo contrario de {es} es", f"{es} in english is"]
    expected = measure_code(model, "good", prompts, layers=ml.CODE_LAYERS,
                            positions=ml.CODE_POSITIONS, share=ml.CODE_SHARE)
    bon = ml.Word(row, side, "french")
    assert keyed[(row, ml.pole(bon, orient))].features == expected.features
    with pytest.raises(CircuitAtlasError):
        ml.codes_without(model, "german", orient)


def test_cross_language_swap_follows_the_injected_code(model, orient, codes):
    for language in ml.LANGUAGES:
        swapped = ml.rates(ml.swap_language(model, language, codes[language], orient))
        suppressed = ml.rates(ml.swap_language(model, language, codes[language], orient,
                                               inject=False))
        assert swapped["clean_correct"] >= 0.9
        assert swapped["swapped"] >= 0.35, (language, swapped)
        # suppression alone breaks the answer but never produces the injected pair's word
        assert suppressed["swapped"] <= 0.05, (language, suppressed)
        assert suppressed["changed"] >= 0.5, (language, suppressed)


def test_swap_with_codes_grouped_by_meaning_fails(model, orient):
    """The same injection with codes grouped by dictionary meaning (ignoring the measured
    reversal of english) does not give the expected word (french: the held-out language)."""
    meaning = {language: 0 for language in ml.LANGUAGES}
    by_meaning = ml.codes_without(model, "french", orient, grouping=meaning)
    control = ml.rates(ml.swap_language(model, "french", by_meaning, orient))
    assert control["swapped"] <= 0.05 and control["changed"] >= 0.5, control


def test_run_swap_rejects_a_donor_in_another_language(model, orient, codes):
    with pytest.raises(CircuitAtlasError, match="question's language"):
        ml.run_swap(model, ml.Word(0, 0, "french"), ml.Word(1, 0, "spanish"), codes["french"],
                    orient)


def test_held_out_questions_decode_to_their_pole(model, orient, codes):
    decoded = ml.decode_words(model, ml.all_words(), orient, codes=codes)
    right = {w: k == (w.row, ml.pole(w, orient)) for w, k in decoded.items()}
    assert sum(right.values()) >= 0.6 * len(right)  # chance: 1 in 30
    held = ml.held_out_words(bundle.demo_world())
    assert sum(right[w] for w in held) >= 5, {w.question: decoded[w] for w in held}
