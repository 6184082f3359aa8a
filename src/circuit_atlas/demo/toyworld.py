"""The seeded "toy world": facts about a small made-up-but-readable world, and the training corpus
drawn from it.

Why a synthetic world: the demo model's circuits should be *known*, so every attribution graph of
it can be checked against ground truth. Each task family plants one mechanism:

- **two-hop recall** -- a city lies in a region, a region has a capital. The corpus states both
  atomic facts for every city ("dallas is in texas", "the region containing dallas is texas",
  "the capital of texas is austin") and asks the *composed* question ("the capital of the region
  containing dallas is austin") only for the training cities. For the held-out cities the composed
  question never appears, so answering it needs the model to find the region inside itself and
  then its capital: the intermediate entity the case study looks for.
- **multilingual concepts** -- opposites and plurals in english, french and spanish, plus
  word-by-word translations, so language-independent features can form. A few (language, pair)
  opposite questions are held out to probe whether the concept transfers across languages.
- **addition** -- "23+45=68" for numbers 0-99 (carries included); some pairs are held out.
- **filler** -- plain sentences from a tiny grammar, so the model is a language model, not only a
  lookup table.

Everything is a pure function of the seed: `build_world(seed)` and `generate_corpus(world, n,
seed)` give identical results on every run (a test regenerates and compares).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterable

from circuit_atlas.demo import lexicon
from circuit_atlas.errors import CircuitAtlasError

# The composed question; the held-out evaluation uses exactly this frame.
TWO_HOP_FRAME = "the capital of the region containing {city} is"
# A second composed frame, used in training only (never for held-out cities either).
TWO_HOP_ALT_FRAME = "{city} lies in a region whose capital is"
CITY_REGION_FRAMES = (
    "{city} is in {region}",
    "{city} is a city in {region}",
    "the region containing {city} is {region}",
)
REGION_CAPITAL_FRAMES = (
    "the capital of {region} is {capital}",
    "{capital} is the capital of {region}",
)
PERSON_FRAMES = (
    "{person} plays {sport}",
    "the sport {person} plays is {sport}",
    "{person} lives in {city}",
)
TRANSLATION_FRAME = "{word} in {language} is {translation}"
ADDITION_FRAME = "{a}+{b}="

# Cities that are always held out, whatever the seed, so the CLI's default prompt is a composition.
ALWAYS_HELD_OUT = ("dallas",)


@dataclass(frozen=True)
class TwoHopItem:
    """One composed question with its answer and the entities of the planted circuit.

    `swap_region` / `swap_capital` name another region, for the swap intervention: suppress the
    features of `region`, inject those of `swap_region`, and the answer should become
    `swap_capital`.
    """

    prompt: str
    answer: str
    city: str
    region: str
    capital: str
    swap_region: str
    swap_capital: str


@dataclass(frozen=True)
class PromptItem:
    """A prompt with its expected continuation (one word, or the digits of a sum)."""

    prompt: str
    answer: str
    family: str


@dataclass(frozen=True)
class World:
    """The facts of one seeded toy world and what is held out of training."""

    seed: int
    capitals: dict[str, str]  # region -> capital
    city_region: dict[str, str]  # city -> region
    held_out_cities: tuple[str, ...]
    person_sport: dict[str, str]
    person_city: dict[str, str]
    held_out_opposites: tuple[tuple[str, int], ...]  # (language, row of lexicon.OPPOSITES)
    held_out_additions: tuple[tuple[int, int], ...]

    @property
    def training_cities(self) -> tuple[str, ...]:
        """Cities whose composed question appears in the corpus."""
        held = set(self.held_out_cities)
        return tuple(c for c in self.city_region if c not in held)

    def to_json(self) -> dict:
        """A JSON-ready dict; `World.from_json` inverts it exactly."""
        return {
            "seed": self.seed,
            "capitals": self.capitals,
            "city_region": self.city_region,
            "held_out_cities": list(self.held_out_cities),
            "person_sport": self.person_sport,
            "person_city": self.person_city,
            "held_out_opposites": [list(x) for x in self.held_out_opposites],
            "held_out_additions": [list(x) for x in self.held_out_additions],
        }

    @classmethod
    def from_json(cls, data: dict) -> "World":
        """Rebuild a world saved by `to_json`; names the missing key if the dict is incomplete."""
        try:
            return cls(
                seed=int(data["seed"]),
                capitals=dict(data["capitals"]),
                city_region=dict(data["city_region"]),
                held_out_cities=tuple(data["held_out_cities"]),
                person_sport=dict(data["person_sport"]),
                person_city=dict(data["person_city"]),
                held_out_opposites=tuple((str(a), int(b)) for a, b in data["held_out_opposites"]),
                held_out_additions=tuple((int(a), int(b)) for a, b in data["held_out_additions"]),
            )
        except KeyError as exc:
            raise CircuitAtlasError(f"toy-world JSON lacks the key {exc.args[0]!r}") from exc


def build_world(
    seed: int = 0,
    *,
    held_out_per_region: int = 3,
    held_out_opposites_per_language: int = 2,
    n_held_out_additions: int = 400,
) -> World:
    """Draw the seed-dependent parts of the world: held-out cities, people, held-out questions.

    Held-out opposites are drawn only for french and spanish, so the english form of every concept
    is always seen and the held-out question asks the model to carry it across languages.
    """
    if not 1 <= held_out_per_region < min(len(c) for _, c in lexicon.REGIONS.values()):
        raise CircuitAtlasError(
            f"held_out_per_region={held_out_per_region} must leave training cities in every region"
        )
    rng = random.Random(seed)
    capitals = {region: capital for region, (capital, _) in lexicon.REGIONS.items()}
    city_region = {c: r for r, (_, cities) in lexicon.REGIONS.items() for c in cities}
    held_out: list[str] = []
    for region, (_, cities) in lexicon.REGIONS.items():
        forced = [c for c in cities if c in ALWAYS_HELD_OUT]
        others = [c for c in cities if c not in ALWAYS_HELD_OUT]
        rng.shuffle(others)
        held_out += (forced + others)[:held_out_per_region]
    all_cities = sorted(city_region)
    person_sport = {p: rng.choice(lexicon.SPORTS) for p in lexicon.PEOPLE}
    person_city = {p: rng.choice(all_cities) for p in lexicon.PEOPLE}
    held_opp: list[tuple[str, int]] = []
    rows = list(range(len(lexicon.OPPOSITES)))
    for language in lexicon.LANGUAGES[1:]:
        drawn = rng.sample(rows, held_out_opposites_per_language)
        held_opp += [(language, r) for r in sorted(drawn)]
    pairs = [(a, b) for a in range(100) for b in range(100)]
    held_add = sorted(rng.sample(pairs, n_held_out_additions))
    return World(
        seed=seed,
        capitals=capitals,
        city_region=city_region,
        held_out_cities=tuple(held_out),
        person_sport=person_sport,
        person_city=person_city,
        held_out_opposites=tuple(held_opp),
        held_out_additions=tuple(held_add),
    )


# ---------------------------------------------------------------------------------------------
# Sentence samplers: one per task family, each `rng -> line`.


def _opposite_lines(world: World) -> list[str]:
    """Every trainable opposite statement, both directions, minus the held-out questions."""
    held = set(world.held_out_opposites)
    lines = []
    for row_index, row in enumerate(lexicon.OPPOSITES):
        for language, (a, b) in zip(lexicon.LANGUAGES, row):
            if (language, row_index) in held:
                continue
            frame = lexicon.FRAMES[language][0]
            lines += [frame.format(a=a, b=b), frame.format(a=b, b=a)]
    return lines


def _plural_lines() -> list[str]:
    return [
        lexicon.FRAMES[language][1].format(a=singular, b=plural)
        for row in lexicon.PLURALS
        for language, (singular, plural) in zip(lexicon.LANGUAGES, row)
    ]


def _translation_lines() -> list[str]:
    """english <-> french/spanish word translations, which tie the three languages together."""
    lines = []
    for table in (lexicon.OPPOSITES, lexicon.PLURALS):
        for row in table:
            english = row[0]
            for language, words in zip(lexicon.LANGUAGES[1:], row[1:]):
                for en_word, word in zip(english, words):
                    lines.append(TRANSLATION_FRAME.format(word=en_word, language=language,
                                                          translation=word))
                    lines.append(TRANSLATION_FRAME.format(word=word, language="english",
                                                          translation=en_word))
    return lines


def _filler(rng: random.Random) -> str:
    parts = [rng.choice(lexicon.FILLER_SUBJECTS), rng.choice(lexicon.FILLER_VERBS),
             rng.choice(lexicon.FILLER_OBJECTS), rng.choice(lexicon.FILLER_TAILS)]
    if rng.random() < 0.3:
        parts += ["and", rng.choice(lexicon.FILLER_VERBS), rng.choice(lexicon.FILLER_OBJECTS)]
    return " ".join(p for p in parts if p)


def _samplers(world: World) -> dict[str, Callable[[random.Random], str]]:
    """Line samplers keyed by family name; the fixed statement lists are built once here."""
    cities = sorted(world.city_region)
    training_cities = sorted(world.training_cities)
    regions = sorted(world.capitals)
    people = sorted(world.person_sport)
    multilingual = _opposite_lines(world) + _plural_lines()
    translations = _translation_lines()
    held_add = set(world.held_out_additions)

    def city_region(rng: random.Random) -> str:
        city = rng.choice(cities)
        return rng.choice(CITY_REGION_FRAMES).format(city=city, region=world.city_region[city])

    def region_capital(rng: random.Random) -> str:
        region = rng.choice(regions)
        return rng.choice(REGION_CAPITAL_FRAMES).format(region=region,
                                                        capital=world.capitals[region])

    def two_hop(rng: random.Random) -> str:
        city = rng.choice(training_cities)
        frame = TWO_HOP_FRAME if rng.random() < 0.75 else TWO_HOP_ALT_FRAME
        return f"{frame.format(city=city)} {world.capitals[world.city_region[city]]}"

    def person(rng: random.Random) -> str:
        name = rng.choice(people)
        return rng.choice(PERSON_FRAMES).format(person=name, sport=world.person_sport[name],
                                                city=world.person_city[name])

    def concept(rng: random.Random) -> str:
        return rng.choice(multilingual)

    def translation(rng: random.Random) -> str:
        return rng.choice(translations)

    def addition(rng: random.Random) -> str:
        while True:
            a, b = rng.randrange(100), rng.randrange(100)
            if (a, b) not in held_add:
                return f"{ADDITION_FRAME.format(a=a, b=b)}{a + b}"

    return {
        "city_region": city_region,
        "region_capital": region_capital,
        "two_hop": two_hop,
        "person": person,
        "multilingual": concept,
        "translation": translation,
        "addition": addition,
        "filler": _filler,
    }


# Share of each family in the corpus. Atomic facts and two-hop questions dominate because they
# are what the model must memorise; filler only keeps it a language model.
DEFAULT_MIX: dict[str, float] = {
    "city_region": 0.22,
    "region_capital": 0.05,
    "two_hop": 0.20,
    "person": 0.05,
    "multilingual": 0.12,
    "translation": 0.06,
    "addition": 0.20,
    "filler": 0.10,
}


def generate_corpus(
    world: World, n_lines: int, *, seed: int | None = None, mix: dict[str, float] | None = None
) -> list[str]:
    """`n_lines` training lines, one document each, drawn from the families in proportion `mix`.

    The seed defaults to the world's seed; the same (world, n_lines, seed, mix) always gives the
    same list of lines.
    """
    if n_lines < 1:
        raise CircuitAtlasError(f"n_lines must be positive, got {n_lines}")
    mix = dict(DEFAULT_MIX if mix is None else mix)
    samplers = _samplers(world)
    unknown = sorted(set(mix) - set(samplers))
    if unknown:
        raise CircuitAtlasError(f"unknown corpus families in mix: {unknown}; "
                                f"known: {sorted(samplers)}")
    families = sorted(mix)
    rng = random.Random(world.seed if seed is None else seed)
    chosen = rng.choices(families, weights=[mix[f] for f in families], k=n_lines)
    return [samplers[family](rng) for family in chosen]


# ---------------------------------------------------------------------------------------------
# Evaluation sets.


def two_hop_eval(world: World, cities: Iterable[str] | None = None) -> list[TwoHopItem]:
    """Composed questions for `cities` (default: the held-out ones) with swap partners.

    The swap partner of a region is the next region in the lexicon's order, so every region is
    both a source and a target once and the choice needs no randomness.
    """
    regions = list(lexicon.REGIONS)
    items = []
    for city in world.held_out_cities if cities is None else cities:
        region = world.city_region[city]
        swap = regions[(regions.index(region) + 1) % len(regions)]
        items.append(TwoHopItem(
            prompt=TWO_HOP_FRAME.format(city=city), answer=world.capitals[region], city=city,
            region=region, capital=world.capitals[region], swap_region=swap,
            swap_capital=world.capitals[swap],
        ))
    return items


def one_hop_eval(world: World) -> list[PromptItem]:
    """Atomic-fact questions for the held-out cities: does the model know their region?"""
    return [PromptItem(f"the region containing {c} is", world.city_region[c], "one_hop")
            for c in world.held_out_cities]


def addition_eval(world: World) -> list[PromptItem]:
    """Held-out sums; the answer is the full digit string (several tokens)."""
    return [PromptItem(ADDITION_FRAME.format(a=a, b=b), str(a + b), "addition")
            for a, b in world.held_out_additions]


def multilingual_eval(world: World) -> list[PromptItem]:
    """Held-out opposite questions (both directions) in french and spanish."""
    items = []
    for language, row in world.held_out_opposites:
        a, b = lexicon.OPPOSITES[row][lexicon.LANGUAGES.index(language)]
        frame = lexicon.FRAMES[language][0]
        items += [PromptItem(frame.format(a=a, b="").rstrip(), b, "multilingual"),
                  PromptItem(frame.format(a=b, b="").rstrip(), a, "multilingual")]
    return items


def vocabulary_words(world: World) -> list[str]:
    """Every word any sampler or evaluation prompt can produce, sorted (digits and '+'/'=' apart).

    The tokenizer is built from this list rather than from a corpus sample, so a quick run with a
    tiny corpus gets the same vocabulary as the full one.
    """
    words: set[str] = set()
    frames = (TWO_HOP_FRAME, TWO_HOP_ALT_FRAME, TRANSLATION_FRAME, *CITY_REGION_FRAMES,
              *REGION_CAPITAL_FRAMES, *PERSON_FRAMES,
              *(f for pair in lexicon.FRAMES.values() for f in pair))
    for frame in frames:
        words.update(w for w in frame.split() if "{" not in w)
    words.update(world.capitals, world.capitals.values(), world.city_region)
    words.update(lexicon.PEOPLE, lexicon.SPORTS, lexicon.LANGUAGES)
    for table in (lexicon.OPPOSITES, lexicon.PLURALS):
        words.update(w for row in table for pair in row for w in pair)
    for phrases in (lexicon.FILLER_SUBJECTS, lexicon.FILLER_VERBS, lexicon.FILLER_OBJECTS,
                    lexicon.FILLER_TAILS):
        words.update(w for p in phrases for w in p.split())
    words.add("and")
    return sorted(words)
