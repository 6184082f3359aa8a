"""The toy-world generator: determinism, what is held out, and that evaluation answers are right."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from circuit_atlas.demo import lexicon, toyworld
from circuit_atlas.errors import CircuitAtlasError

N_LINES = 20_000


@pytest.fixture(scope="module")
def world() -> toyworld.World:
    return toyworld.build_world(0)


@pytest.fixture(scope="module")
def corpus(world) -> list[str]:
    return toyworld.generate_corpus(world, N_LINES)


def test_same_seed_gives_identical_text(world, corpus):
    again = toyworld.generate_corpus(toyworld.build_world(0), N_LINES)
    assert again == corpus
    assert toyworld.build_world(0) == world


def test_other_seed_gives_other_text_and_split(corpus, world):
    other = toyworld.build_world(1)
    assert other.held_out_cities != world.held_out_cities
    assert toyworld.generate_corpus(other, N_LINES) != corpus


def test_held_out_composition_never_in_corpus_but_atomic_facts_are(world, corpus):
    text = "\n".join(corpus)
    for city in world.held_out_cities:
        region = world.city_region[city]
        assert toyworld.TWO_HOP_FRAME.format(city=city) not in text
        assert f"{city} lies in a region" not in text
        # the composed answer is reachable only through the atomic facts, all of which are taught
        assert f"\n{city} is in {region}\n" in f"\n{text}\n"
        assert f"the region containing {city} is {region}" in text
        assert f"the capital of {region} is {world.capitals[region]}" in text
    for city in world.training_cities[:10]:
        assert toyworld.TWO_HOP_FRAME.format(city=city) in text
    assert "dallas" in world.held_out_cities


def test_every_region_keeps_training_cities(world):
    per_region = Counter(world.city_region[c] for c in world.training_cities)
    assert set(per_region) == set(lexicon.REGIONS)
    assert min(per_region.values()) >= 5


def test_held_out_additions_and_opposites_absent(world, corpus):
    sums = {line for line in corpus if "+" in line}
    assert sums, "corpus has no addition lines"
    for a, b in world.held_out_additions:
        assert f"{a}+{b}={a + b}" not in sums
    for line in sums:  # every taught sum is correct
        left, right = line.split("=")
        a, b = map(int, left.split("+"))
        assert a + b == int(right)
    lines = set(corpus)
    for item in toyworld.multilingual_eval(world):
        assert f"{item.prompt} {item.answer}" not in lines


def test_eval_answers_match_the_lexicon(world):
    capital_of_city = {c: cap for r, (cap, cities) in lexicon.REGIONS.items() for c in cities}
    items = toyworld.two_hop_eval(world)
    assert len(items) == len(world.held_out_cities) == 3 * len(lexicon.REGIONS)
    for item in items:
        assert item.answer == capital_of_city[item.city]
        assert item.prompt.endswith(f"containing {item.city} is")
        assert item.swap_region != item.region
        assert item.swap_capital == lexicon.REGIONS[item.swap_region][0]
    for item in toyworld.addition_eval(world):
        a, b = map(int, item.prompt.rstrip("=").split("+"))
        assert int(item.answer) == a + b


def test_names_are_unique_and_languages_disjoint():
    names = [*lexicon.REGIONS, *(cap for cap, _ in lexicon.REGIONS.values()),
             *(c for _, cities in lexicon.REGIONS.values() for c in cities), *lexicon.PEOPLE,
             *lexicon.SPORTS]
    assert len(names) == len(set(names))
    by_language = [set() for _ in lexicon.LANGUAGES]
    for table in (lexicon.OPPOSITES, lexicon.PLURALS):
        for row in table:
            for words, pair in zip(by_language, row):
                words.update(pair)
    en, fr, es = by_language
    assert not (en & fr) and not (en & es) and not (fr & es)
    assert not set(names) & (en | fr | es)
    assert all(re.fullmatch(r"[a-z]+", n) for n in names)


def test_vocabulary_covers_corpus_and_eval(world, corpus):
    vocab = set(toyworld.vocabulary_words(world))
    words = {w for line in corpus for w in line.split() if not re.search(r"\d", w)}
    for item in toyworld.multilingual_eval(world) + toyworld.one_hop_eval(world):
        words.update(item.prompt.split() + [item.answer])
    assert words <= vocab


def test_world_json_round_trip(world):
    import json

    assert toyworld.World.from_json(json.loads(json.dumps(world.to_json()))) == world
    with pytest.raises(CircuitAtlasError, match="capitals"):
        toyworld.World.from_json({k: v for k, v in world.to_json().items() if k != "capitals"})


def test_bad_arguments_raise():
    with pytest.raises(CircuitAtlasError, match="held_out_per_region"):
        toyworld.build_world(0, held_out_per_region=10)
    with pytest.raises(CircuitAtlasError, match="unknown corpus families"):
        toyworld.generate_corpus(toyworld.build_world(0), 5, mix={"poetry": 1.0})
    with pytest.raises(CircuitAtlasError, match="n_lines"):
        toyworld.generate_corpus(toyworld.build_world(0), 0)
