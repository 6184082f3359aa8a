"""The automatic labelling rule on hand-written dashboard examples (no model, no store)."""

from __future__ import annotations

import pytest

from circuit_atlas.demo import toyworld
from circuit_atlas.demo.labels import (ExampleView, Vocabulary, auto_label, normalise,
                                       region_of_label)


@pytest.fixture(scope="module")
def vocab():
    return Vocabulary.from_world(toyworld.build_world(0))


def _ex(text: str, focus_word: str, occurrence: int = 0) -> ExampleView:
    """An example over `<bos> text` whose focus is the n-th occurrence of `focus_word`."""
    tokens = ["<bos>"] + ["▁" + w for w in text.split()]
    hits = [i for i, t in enumerate(tokens) if t == "▁" + focus_word]
    return ExampleView(tokens, hits[occurrence])


def test_normalise_strips_the_space_marker():
    assert normalise("▁Dallas") == "dallas" and normalise(" is ") == "is"


def test_one_entity_word_names_what_it_is(vocab):
    examples = [_ex(f"{c} is in texas", c) for c in ["dallas"] * 5]
    assert auto_label(examples, vocab) == "dallas (city in texas)"
    examples = [_ex("the capital of texas is austin", "austin")] * 4 + [_ex("austin is the capital of texas", "austin")]
    assert auto_label(examples, vocab) == "austin (capital of texas)"
    assert auto_label([_ex("the region containing waco is texas", "texas")] * 6, vocab) == "texas (region)"


def test_region_from_context_when_the_focal_word_is_a_function_word(vocab):
    # the feature fires on "is" after texas cities: rule 1 does not apply ("is" is no entity),
    # every left context names exactly texas
    cities = ["dallas", "houston", "plano", "waco", "laredo"]
    examples = [_ex(f"the capital of the region containing {c} is", "is") for c in cities]
    assert auto_label(examples, vocab) == "texas (region, from context)"


def test_mixed_regions_below_the_share_get_a_several_regions_label(vocab):
    # 3 of 5 texas (60 % < 80 %): no single region; every example names one region -> rule 5
    cities = ["dallas", "houston", "plano", "fresno", "oakland"]
    examples = [_ex(f"the capital of the region containing {c} is", "is") for c in cities]
    assert auto_label(examples, vocab) == "regions texas/california"
    # contexts naming no region: the shared focal word is all that is left (rule 6)
    examples = [_ex(f"the {w} is", "is") for w in ["dog", "cat", "house", "tree", "car"]]
    assert auto_label(examples, vocab) == '"is"'


def test_right_context_is_ignored(vocab):
    # texas appears only after the focus, which a causal model cannot have seen
    examples = [_ex("the capital of texas is austin", "of")] * 3 + [_ex("the region containing waco is texas", "containing")] * 2
    assert auto_label(examples, vocab) is None
    examples = [_ex("the capital of texas is austin", "of")] * 5
    assert auto_label(examples, vocab) == '"of"'


def test_number_and_digit_rules(vocab):
    examples = [_ex("4 3 + 7 1 = 1 1 4", "3"), _ex("4 3 + 1 = 4 4", "4"),
                _ex("4 3 + 2 = 4 5", "4"), _ex("4 3 + 5 = 4 8", "3"), _ex("4 3 + 9 = 5 2", "3")]
    assert auto_label(examples, vocab) == "number 43"
    assert auto_label([_ex("1 + 7 = 8", "7")] * 5, vocab) == "digit 7"


def test_kind_rule_and_too_few_examples(vocab):
    cities = ["dallas", "fresno", "miami", "tampa", "seattle"]
    examples = [_ex(f"alice lives in {c}", c) for c in cities]
    assert auto_label(examples, vocab) == "any city"
    assert auto_label(examples[:4], vocab) is None


def test_region_of_label_inverts_region_labels(vocab):
    assert region_of_label("texas (region)", vocab) == "texas"
    assert region_of_label("dallas (city in texas)", vocab) == "texas"
    assert region_of_label("austin (capital of texas)", vocab) == "texas"
    assert region_of_label("ohio (region, from context)", vocab) == "ohio"
    for other in ('"is"', "any city", "digit 7", "number 43", None, ""):
        assert region_of_label(other, vocab) is None
