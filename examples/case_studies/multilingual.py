"""The multilingual case study: which transcoder features do english, french and spanish share?

The toy world teaches fifteen pairs of opposites in three languages ("the opposite of big is
small", "le contraire de grand est petit", "lo contrario de grande es pequeno") plus word-by-word
translations ("big in french is grand", "grand in english is big"). A few french and spanish
opposite questions are held out, so answering them needs knowledge carried across languages.

Every prompt of this family ends in the same place: the final "is" / "est" / "es", where the model
must hold the word it was asked about. This module measures, at that final position, which
features the prompts of different languages share:

- **sharing** (`sharing`): the pooled Jaccard overlap of the active (layer, feature) sets of two
  languages' prompts, for words of the *same meaning*, of *opposite meaning* in the same pair, and
  of *other pairs*. Shared concept features show up as same-pair overlap far above other-pair
  overlap.
- **orientation** (`orientation`): within a pair the model's features have two poles, and which
  word of a language sits on which pole is *measured*, not assumed: a language is reversed
  relative to the reference language when its words share more features with the reference's
  word of opposite meaning than with the translation. (In the bundled model english is reversed
  relative to french and spanish; docs/case-studies/multilingual.md.)
- **language features** (`language_rates`): at the word position the features say which
  language the word is in, not which word it is.

The causal test (`codes_without`, `run_swap`, `swap_language`): concept codes
(`codes.FeatureCode`: the features active on at least `CODE_SHARE` of a concept's prompts, with
their mean values) are measured
for every (pair, pole) on the prompts of *two* languages only; on each question of the third
language the true word's code is suppressed and another pair's code injected at the final
position. If the features are shared across languages and carry the word, the answer becomes the
opposite of the injected word, *in the question's language*, although no prompt of that language
was used to measure the code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from circuit_atlas.demo import lexicon
from .codes import (FeatureCode, answer_word, dense_activations, first_token_id,
                                      measure_code, share_true, swap_interventions)
from circuit_atlas.demo.toyworld import TRANSLATION_FRAME, World
from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.interventions import intervene

LANGUAGES: tuple[str, ...] = lexicon.LANGUAGES
REFERENCE = LANGUAGES[0]  # english: the language every other one is translated to and from
N_PAIRS = len(lexicon.OPPOSITES)
CODE_LAYERS = (0, 1, 2, 3)
CODE_POSITIONS = (-1,)  # the final "is" / "est" / "es"
# Each concept code is measured on only five prompts (three of one language, two of the other),
# so "most of them" is 3 of 5; the two-hop case study's 0.8 would keep 4 of 5.
CODE_SHARE = 0.5
WORD_POSITION = -2  # the asked-about word in every opposite question

Site = tuple[int, int]  # (layer, feature)
ConceptKey = tuple[int, int]  # (pair row, pole)


@dataclass(frozen=True, order=True)
class Word:
    """One word of the opposites lexicon: pair `row`, `side` 0 or 1 of the pair, `language`."""

    row: int
    side: int
    language: str

    def __post_init__(self) -> None:
        if not 0 <= self.row < N_PAIRS:
            raise CircuitAtlasError(f"Word.row must lie in [0, {N_PAIRS}), got {self.row}")
        if self.side not in (0, 1):
            raise CircuitAtlasError(f"Word.side must be 0 or 1, got {self.side}")
        if self.language not in LANGUAGES:
            raise CircuitAtlasError(f"Word.language must be one of {LANGUAGES}, "
                                    f"got {self.language!r}")

    @property
    def text(self) -> str:
        return lexicon.OPPOSITES[self.row][LANGUAGES.index(self.language)][self.side]

    @property
    def opposite(self) -> "Word":
        return Word(self.row, 1 - self.side, self.language)

    def translated(self, language: str) -> "Word":
        return Word(self.row, self.side, language)

    @property
    def question(self) -> str:
        """The opposite question about this word, in its language (answer: `opposite.text`)."""
        return lexicon.FRAMES[self.language][0].format(a=self.text, b="").rstrip()

    @property
    def translation_prompts(self) -> tuple[str, ...]:
        """The training translations that start from this word (english words go to each other
        language, the others to english); they too end where the model holds the word."""
        targets = ([lang for lang in LANGUAGES if lang != REFERENCE]
                   if self.language == REFERENCE else [REFERENCE])
        return tuple(TRANSLATION_FRAME.format(word=self.text, language=t, translation="").rstrip()
                     for t in targets)

    @property
    def prompts(self) -> tuple[str, ...]:
        return (self.question, *self.translation_prompts)


def all_words(languages: Iterable[str] = LANGUAGES) -> list[Word]:
    """Every word of the opposites lexicon in `languages`, in lexicon order."""
    return [Word(row, side, language) for language in languages for row in range(N_PAIRS)
            for side in (0, 1)]


def held_out_words(world: World) -> list[Word]:
    """The words whose opposite question never appears in training (both sides of each held-out
    (language, pair))."""
    return [Word(row, side, language) for language, row in world.held_out_opposites
            for side in (0, 1)]


# ---------------------------------------------------------------------------------------------
# Measuring what is shared.


def active_sites(model, prompt: str, *, position: int = -1,
                 layers: Sequence[int] = CODE_LAYERS) -> frozenset[Site]:
    """The (layer, feature) pairs active at `position` of `prompt`."""
    acts = dense_activations(model, prompt)
    return frozenset((layer, int(f)) for layer in layers
                     for f in (acts[layer, position] > 0).nonzero().flatten().tolist())


def feature_sets(model, words: Iterable[Word], *, position: int = -1,
                 layers: Sequence[int] = CODE_LAYERS) -> dict[Word, list[frozenset[Site]]]:
    """Active sites at `position` of each of a word's prompts (question first)."""
    return {w: [active_sites(model, p, position=position, layers=layers) for p in w.prompts]
            for w in words}


def question_sets(model, words: Iterable[Word], *, position: int = -1,
                  layers: Sequence[int] = CODE_LAYERS) -> dict[Word, list[frozenset[Site]]]:
    """Like `feature_sets` with the opposite question alone (e.g. at `WORD_POSITION`, which only
    the questions share)."""
    return {w: [active_sites(model, w.question, position=position, layers=layers)] for w in words}


@dataclass(frozen=True)
class Sharing:
    """Pooled Jaccard overlap of the final-position features of two languages' prompts.

    Pooled: sum of intersections over sum of unions across all prompt pairs of the relation, so
    prompts with few active features weigh less and an empty pair does not divide by zero.
    """

    languages: tuple[str, str]
    same_meaning: float  # a word and its translation
    opposite_meaning: float  # a word and the translation of its opposite
    other_pair: float  # words of different pairs

    def ratio(self) -> float:
        """Overlap within a pair (the better-aligned of the two relations) over the baseline."""
        best = max(self.same_meaning, self.opposite_meaning)
        return best / self.other_pair if self.other_pair > 0 else float("inf")


def _pooled(pairs: Iterable[tuple[frozenset, frozenset]]) -> float:
    inter = union = 0
    for a, b in pairs:
        inter += len(a & b)
        union += len(a | b)
    return inter / union if union else 0.0


def sharing(sets: Mapping[Word, Sequence[frozenset[Site]]], a: str, b: str, *,
            layers: Iterable[int] | None = None) -> Sharing:
    """Overlap between languages `a` and `b` (optionally only at `layers`) by relation."""
    if a == b:
        raise CircuitAtlasError(f"sharing compares two different languages, got {a!r} twice")
    keep = None if layers is None else set(layers)

    def only(s: frozenset) -> frozenset:
        return s if keep is None else frozenset(x for x in s if x[0] in keep)

    groups: dict[str, list[tuple[frozenset, frozenset]]] = {"same": [], "opposite": [], "other": []}
    for wa, sa in sets.items():
        if wa.language != a:
            continue
        for wb, sb in sets.items():
            if wb.language != b:
                continue
            relation = ("other" if wa.row != wb.row
                        else "same" if wa.side == wb.side else "opposite")
            groups[relation] += [(only(x), only(y)) for x in sa for y in sb]
    if not groups["same"]:
        raise CircuitAtlasError(f"no translated words of {a!r} and {b!r} among the measured sets")
    return Sharing((a, b), _pooled(groups["same"]), _pooled(groups["opposite"]),
                   _pooled(groups["other"]))


def orientation(sets: Mapping[Word, Sequence[frozenset[Site]]],
                reference: str = REFERENCE) -> dict[str, int]:
    """1 for each language whose poles are reversed relative to `reference` (its words share more
    features with the reference's word of opposite meaning than with the translation), else 0."""
    languages = sorted({w.language for w in sets} | {reference}, key=LANGUAGES.index)
    result = {reference: 0}
    for language in languages:
        if language != reference:
            s = sharing(sets, reference, language)
            result[language] = int(s.opposite_meaning > s.same_meaning)
    return result


def pole(word: Word, orient: Mapping[str, int]) -> int:
    """The pole of the model's pair code that `word` sits on, given the measured orientation."""
    return word.side ^ orient[word.language]


def pole_words(row: int, pole_: int, orient: Mapping[str, int]) -> list[Word]:
    """The words of every language on pole `pole_` of pair `row` (inverse of `pole`)."""
    return [Word(row, pole_ ^ orient[language], language) for language in LANGUAGES]


def language_rates(model, words: Iterable[Word], *, position: int = WORD_POSITION,
                   layers: Sequence[int] = CODE_LAYERS) -> dict[Site, dict[str, float]]:
    """Firing rate of each feature at `position` of the opposite questions, per language of the
    question (features that never fire are left out)."""
    counts: dict[Site, dict[str, int]] = {}
    totals: dict[str, int] = {}
    for word in words:
        totals[word.language] = totals.get(word.language, 0) + 1
        for site in active_sites(model, word.question, position=position, layers=layers):
            per = counts.setdefault(site, {})
            per[word.language] = per.get(word.language, 0) + 1
    return {site: {lang: per.get(lang, 0) / n for lang, n in totals.items()}
            for site, per in sorted(counts.items())}


def language_features(rates: Mapping[Site, Mapping[str, float]], *, min_rate: float = 0.9,
                      max_other: float = 0.1) -> dict[str, list[Site]]:
    """Features that fire on at least `min_rate` of one language's questions and at most
    `max_other` of every other language's: the language-specific features."""
    result: dict[str, list[Site]] = {}
    for site, per in rates.items():
        for lang, rate in per.items():
            others = [r for other, r in per.items() if other != lang]
            if rate >= min_rate and all(r <= max_other for r in others):
                result.setdefault(lang, []).append(site)
    return result


# ---------------------------------------------------------------------------------------------
# Concept codes and the cross-language swap.


def concept_codes(model, words: Iterable[Word], orient: Mapping[str, int], *,
                  layers: Sequence[int] = CODE_LAYERS, positions: Sequence[int] = CODE_POSITIONS,
                  share: float = CODE_SHARE) -> dict[ConceptKey, FeatureCode]:
    """The code of every (pair row, pole), measured on all prompts of the `words` on that pole."""
    groups: dict[ConceptKey, list[str]] = {}
    for word in words:
        groups.setdefault((word.row, pole(word, orient)), []).extend(word.prompts)
    return {key: measure_code(model, f"pair {key[0]} pole {key[1]}", prompts, layers=layers,
                              positions=positions, share=share)
            for key, prompts in sorted(groups.items())}


def donor_row(row: int, step: int = 1) -> int:
    """The pair injected into questions about pair `row`: the next one in lexicon order, so every
    pair is a source and a donor once and the choice needs no randomness."""
    return (row + step) % N_PAIRS


@dataclass(frozen=True)
class SwapOutcome:
    """One question before and after replacing its word's code by another pair's code."""

    word: Word
    donor: Word  # the word of the donor pair on the same pole, in the question's language
    clean_top: str
    swapped_top: str
    p_expected: float
    n_suppressed: int
    n_injected: int

    @property
    def expected(self) -> str:
        """The answer if the model reads the injected code as `donor`: its opposite."""
        return self.donor.opposite.text

    @property
    def clean_correct(self) -> bool:
        return self.clean_top == self.word.opposite.text

    @property
    def swapped(self) -> bool:
        return self.swapped_top == self.expected

    @property
    def echoed(self) -> bool:
        """The answer is the donor word itself: the model read the donor pair's *other* pole."""
        return self.swapped_top == self.donor.text

    @property
    def changed(self) -> bool:
        return self.swapped_top != self.clean_top


def run_swap(model, word: Word, donor: Word, codes: Mapping[ConceptKey, FeatureCode],
             orient: Mapping[str, int], *, suppress: bool = True,
             inject: bool = True) -> SwapOutcome:
    """Suppress `word`'s code and inject `donor`'s (free mode) on `word`'s question."""
    if donor.language != word.language:
        raise CircuitAtlasError(f"the donor word must be in the question's language "
                                f"{word.language!r}, got {donor.language!r}")
    try:
        true, other = codes[(word.row, pole(word, orient))], codes[(donor.row, pole(donor, orient))]
    except KeyError as exc:
        raise CircuitAtlasError(f"no concept code for (pair, pole) {exc.args[0]}") from exc
    interventions, n_off, n_on = swap_interventions(dense_activations(model, word.question), true,
                                                    other, suppress=suppress, inject=inject)
    result = intervene(model, word.question, interventions, mode="free", top_k=1)
    return SwapOutcome(word, donor, answer_word(result.top_before[0].token),
                       answer_word(result.top_after[0].token),
                       result.probability(first_token_id(model, donor.opposite.text)), n_off, n_on)


def codes_without(model, language: str, orient: Mapping[str, int], *,
                  grouping: Mapping[str, int] | None = None,
                  share: float = CODE_SHARE) -> dict[ConceptKey, FeatureCode]:
    """Concept codes measured on every language *except* `language`, keyed by the poles that
    `orient` gives `language`'s words.

    `grouping` groups the measuring prompts by another rule than `orient` (the control: all zeros
    groups them by dictionary meaning, ignoring the measured reversal); the key of each code is
    then the pole, under `orient`, of the `language` word with that meaning.
    """
    if language not in LANGUAGES:
        raise CircuitAtlasError(f"language must be one of {LANGUAGES}, got {language!r}")
    grouping = orient if grouping is None else grouping
    codes = concept_codes(model, all_words(l for l in LANGUAGES if l != language), grouping,
                          share=share)
    shift = grouping[language] ^ orient[language]
    return {(row, p ^ shift): code for (row, p), code in codes.items()}


def swap_language(model, language: str, codes: Mapping[ConceptKey, FeatureCode],
                  orient: Mapping[str, int], *, step: int = 1, **options) -> list[SwapOutcome]:
    """`run_swap` on every question of `language`, the donor being the pair `step` rows on, on
    the true word's side."""
    return [run_swap(model, word, Word(donor_row(word.row, step), word.side, language), codes,
                     orient, **options)
            for word in all_words([language])]


def rates(outcomes: Sequence[SwapOutcome]) -> dict[str, float]:
    """Shares of outcomes that gave the expected answer, echoed the donor, changed at all, and
    were right before the swap."""
    return {"swapped": share_true(o.swapped for o in outcomes),
            "echoed": share_true(o.echoed for o in outcomes),
            "changed": share_true(o.changed for o in outcomes),
            "clean_correct": share_true(o.clean_correct for o in outcomes)}


# ---------------------------------------------------------------------------------------------
# Held-out questions: does their final position carry the code measured in other languages?


def code_site_set(code: FeatureCode) -> set[Site]:
    """The (layer, feature) pairs of a code, whatever their position."""
    return {(layer, f) for (layer, _), feats in code.features.items() for f in feats}


def nearest_concept(sites: frozenset[Site], codes: Mapping[ConceptKey, FeatureCode]) -> ConceptKey:
    """The (pair, pole) whose code's sites overlap `sites` most (Jaccard; ties: lexicon order)."""
    def score(key: ConceptKey) -> float:
        code_sites = code_site_set(codes[key])
        union = len(code_sites | sites)
        return len(code_sites & sites) / union if union else 0.0

    if not codes:
        raise CircuitAtlasError("nearest_concept needs at least one code")
    return max(sorted(codes), key=score)


def decode_words(model, words: Iterable[Word], orient: Mapping[str, int], *,
                 codes: Mapping[str, Mapping[ConceptKey, FeatureCode]] | None = None,
                 ) -> dict[Word, ConceptKey]:
    """For each word, the nearest concept code to its question's final position, with codes
    measured on the other languages only (`codes`: language -> `codes_without(language)`, computed
    when not given)."""
    words = list(words)
    result: dict[Word, ConceptKey] = {}
    for language in sorted({w.language for w in words}, key=LANGUAGES.index):
        measured = (codes[language] if codes is not None and language in codes
                    else codes_without(model, language, orient))
        for word in (w for w in words if w.language == language):
            result[word] = nearest_concept(active_sites(model, word.question), measured)
    return result


def top_answer(model, prompt: str) -> tuple[str, float]:
    """The model's most likely next word after `prompt` and its probability."""
    logits = model.run(model.tokenize(prompt)).logits[-1]
    probs = torch.softmax(logits.float(), dim=-1)
    p, i = probs.max(dim=-1)
    return answer_word(model.tokenizer.convert_ids_to_tokens(int(i))), float(p)
