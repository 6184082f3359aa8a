"""Automatic labels for the demo's features, read off their dashboards' top examples.

Why automatic: the toy world is small and every word belongs to a known table, so "this feature
fires on texas things" can be decided by counting instead of by a person. The labels make the
demo's graphs and dashboards readable at a glance. They describe a feature's *top* examples only:
a feature that fires on every city but most strongly on seattle is labelled "seattle (city in
washington)" (docs/case-studies.md discusses such cases), which is why the swap intervention
measures region codes from activations instead of trusting labels.

The rule (a feature gets at most one label; the first rule that applies wins). Let E be the
feature's top activating examples (at least `MIN_EXAMPLES`), and for each example its *focal
word* (the token where the feature fired, "▁" and spaces stripped) and its *left context* (the
tokens up to and including the focal one: all a causal model can have seen there).

1. **one entity**: one focal word that is a toy-world entity (region, city, capital, person,
   sport, digit) accounts for at least `SHARE` (80 %) of E. Labelled by what the word is:
   `texas (region)`, `dallas (city in texas)`, `austin (capital of texas)`, `digit 7`,
   `"tennis"`.
2. **one region**: at least `SHARE` of E mention exactly one region in their left context (by
   the region's name, one of its cities or its capital) and it is the same region R:
   `texas (region, from context)`. These are the features that carry the intermediate entity of
   a two-hop question at the positions after the city (their focal word is often "is").
3. **one number**: at least `SHARE` of the focal words are digits inside the same number (the
   maximal run of digit tokens around the focus): `number 43`.
4. **one kind**: at least `SHARE` of the focal words are entities of one kind (city, region,
   capital, person, sport, digit): `any city`, `any region`, ...
5. **several regions**: at least `SHARE` of E mention exactly one region each, but no region
   dominates: `regions texas/ohio/virginia` (the three most frequent, most frequent first). The
   demo's transcoders encode the intermediate region partly with such shared features.
6. **one word**: any other focal word (`"is"`, `"capital"`) with at least `SHARE` of E.

`region_of_label(label)` inverts rules 1 (regions, cities, capitals) and 2, so code can ask
"which features are texas features" from the labels alone.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from circuit_atlas.demo import lexicon
from circuit_atlas.demo.toyworld import World

SHARE = 0.8
MIN_EXAMPLES = 5
_REGION_LABEL = re.compile(r"^(?P<word>\w+) \((?:region(?:, from context)?|city in (?P<r1>\w+)|"
                           r"capital of (?P<r2>\w+))\)$")


def normalise(token: str) -> str:
    """A token string as a bare lowercase word ("▁Dallas" -> "dallas")."""
    return token.replace("▁", " ").strip().lower()


@dataclass(frozen=True)
class Vocabulary:
    """What each toy-world word is: the lookup tables the rule needs."""

    region_of_word: dict[str, str]  # region, city or capital -> its region
    kind_of_word: dict[str, str]  # word -> city | region | capital | person | sport

    @classmethod
    def from_world(cls, world: World) -> "Vocabulary":
        region_of: dict[str, str] = {}
        kind: dict[str, str] = {}
        for region, capital in world.capitals.items():
            region_of[region], kind[region] = region, "region"
            region_of[capital], kind[capital] = region, "capital"
        for city, region in world.city_region.items():
            region_of[city], kind[city] = region, "city"
        kind.update({p: "person" for p in lexicon.PEOPLE})
        kind.update({s: "sport" for s in lexicon.SPORTS})
        return cls(region_of, kind)

    def kind(self, word: str) -> str | None:
        return "digit" if word.isdigit() else self.kind_of_word.get(word)

    def describe(self, word: str) -> str:
        """Rule 1's label of a word."""
        kind = self.kind(word)
        if kind == "region":
            return f"{word} (region)"
        if kind == "city":
            return f"{word} (city in {self.region_of_word[word]})"
        if kind == "capital":
            return f"{word} (capital of {self.region_of_word[word]})"
        if kind == "digit":
            return f"digit {word}"
        return f'"{word}"'

    def regions_in(self, words: Iterable[str]) -> set[str]:
        return {self.region_of_word[w] for w in words if w in self.region_of_word}


@dataclass(frozen=True)
class ExampleView:
    """The part of a dashboard example the rule reads: token strings and the focal index."""

    tokens: Sequence[str]
    focus: int


def _number_at(words: Sequence[str], focus: int) -> str | None:
    """The maximal run of digit tokens containing the focus, or None if the focus is no digit."""
    if not words[focus].isdigit():
        return None
    start, end = focus, focus + 1
    while start > 0 and words[start - 1].isdigit():
        start -= 1
    while end < len(words) and words[end].isdigit():
        end += 1
    return "".join(words[start:end])


def _dominant(values: Sequence[str | None], n: int) -> str | None:
    """The value held by at least SHARE of n examples (None values count against it)."""
    counts = Counter(v for v in values if v is not None)
    if not counts:
        return None
    value, count = counts.most_common(1)[0]
    return value if count >= SHARE * n else None


def auto_label(examples: Sequence[ExampleView], vocab: Vocabulary) -> str | None:
    """The label the module's rule gives a feature with these top examples, or None."""
    n = len(examples)
    if n < MIN_EXAMPLES:
        return None
    words = [[normalise(t) for t in ex.tokens] for ex in examples]
    focal = [w[ex.focus] for w, ex in zip(words, examples)]
    word = _dominant(focal, n)
    if word is not None and vocab.kind(word) is not None:
        return vocab.describe(word)
    regions = [vocab.regions_in(w[:ex.focus + 1]) for w, ex in zip(words, examples)]
    single = [next(iter(r)) for r in regions if len(r) == 1]
    region = _dominant(single, n)
    if region is not None:
        return f"{region} (region, from context)"
    number = _dominant([_number_at(w, ex.focus) for w, ex in zip(words, examples)], n)
    if number is not None:
        return f"number {number}"
    kind = _dominant([vocab.kind(f) for f in focal], n)
    if kind is not None:
        return f"any {kind}"
    if len(single) >= SHARE * n:
        return "regions " + "/".join(r for r, _ in Counter(single).most_common(3))
    if word is not None:
        return vocab.describe(word)
    return None


def region_of_label(label: str | None, vocab: Vocabulary) -> str | None:
    """The region a rule-1/rule-2 label names (a region, one of its cities, its capital)."""
    if not label:
        return None
    match = _REGION_LABEL.match(label)
    if match is None:
        return None
    return vocab.region_of_word.get(match["word"])


def label_store(store, world: World, *, progress: bool = True) -> dict[tuple[int, int], str]:
    """Label every feature of a `FeatureStore` that the rule labels; returns the labels set.

    Features the rule leaves unlabelled keep no label (a stale automatic label is removed).
    """
    from tqdm.auto import tqdm

    vocab = Vocabulary.from_world(world)
    written: dict[tuple[int, int], str] = {}
    keys = [(layer, f) for layer in range(store.n_layers) for f in range(store.n_features)]
    existing = store.labels()
    for layer, feature in tqdm(keys, desc="labelling features", disable=not progress):
        card = store.card(layer, feature)
        label = auto_label([ExampleView(e.tokens, e.focus) for e in card.top_examples], vocab)
        if label is not None:
            written[(layer, feature)] = label
        if label != existing.get((layer, feature)):
            store.set_label(layer, feature, label)
    return written
