"""The addition circuit of the bundled demo model, found by the tools (docs/case-studies/addition.md).

1. In the attribution graphs of held-out sums, the most influential feature before the last
   position is a layer-0 feature at the second operand's ones digit.
2. Replacing the ones-digit combination code there (measured on training pairs only) by that of
   another combination (a0', b0') makes the next digit follow the arithmetic of the injected
   digits: the ones digit becomes (a0' + b0') % 10 (not (a0 + b0') % 10: the code holds both
   operands), and at "=" the tens digit moves by the flipped carry. Suppressing alone does not.

Every expected digit is computed here from the operands; nothing is copied from the model. To stay
under ~40 s on one thread the codes use 10 prompts per combination (the script: 20), the
ones-digit swap runs on every third held-out item and the graphs on every tenth.
"""

from __future__ import annotations

import pytest

import circuit_atlas
from circuit_atlas.demo import bundle
from circuit_atlas.graph import node_influence

from case_studies.addition import (AdditionItem, carry_items, carry_target, combo_codes,
                                   ones_digit_items, run_swap, swap_success_rate, training_pairs)


@pytest.fixture(scope="module")
def world():
    return bundle.demo_world()


@pytest.fixture(scope="module")
def codes(model, world):
    return combo_codes(model, world, n_prompts=10)


def test_items_are_held_out_and_their_answers_are_arithmetic(world):
    held = set(world.held_out_additions)
    assert not held & set(training_pairs(world))
    items = ones_digit_items(world)
    assert items and all((i.a, i.b) in held for i in items)
    for item in items:
        assert item.prompt == f"{item.a}+{item.b}={(item.a + item.b) // 10}"
        assert item.answer == str((item.a % 10 + item.b % 10) % 10)
    for item in carry_items(world):
        assert item.prompt.endswith("=") and item.a + item.b < 100
        assert item.answer == str(item.a // 10 + item.b // 10 + (item.a % 10 + item.b % 10 >= 10))


def test_carry_target_flips_the_carry_at_the_smallest_change():
    for a0 in range(10):
        for b0 in range(10):
            x, y = carry_target(10 + a0, 20 + b0)
            assert (x + y >= 10) != (a0 + b0 >= 10)
            best = min(abs(p - a0) + abs(q - b0) for p in range(10) for q in range(10)
                       if (p + q >= 10) != (a0 + b0 >= 10))
            assert abs(x - a0) + abs(y - b0) == best


def test_the_prompt_layout_puts_b0_where_the_items_say(model):
    item = AdditionItem(47, 38, "8")
    tokens = model.tokenizer.convert_ids_to_tokens(model.tokenize(item.prompt).tolist())
    assert tokens[item.b0_position] == "8" and tokens[item.b0_position - 1] == "3"
    assert tokens[item.b0_position + 1] == "="


def test_graphs_route_the_ones_digit_through_b0(model, world):
    items = ones_digit_items(world)[::10]
    at_b0 = 0
    for item in items:
        graph = circuit_atlas.attribute(model, item.prompt, progress=False)
        influence = node_influence(graph)[:graph.n_selected]
        coords = graph.feature_coords
        last = graph.n_positions - 1
        earlier = [i for i in range(graph.n_selected) if int(coords[i, 1]) < last]
        top = max(earlier, key=lambda i: float(influence[i]))
        b0 = graph.n_positions + item.b0_position
        at_b0 += int(coords[top, 0]) == 0 and int(coords[top, 1]) == b0
    assert at_b0 >= 0.8 * len(items), f"top earlier feature at b0 in {at_b0}/{len(items)}"


def test_ones_digit_follows_the_injected_combination(model, world, codes):
    items = ones_digit_items(world)[::3]
    held = set(world.held_out_additions)
    assert all((i.a, i.b) in held for i in items)
    targets = [((i.a % 10 + 3) % 10, (i.b % 10 + 5) % 10) for i in items]
    outcomes = [run_swap(model, i, codes, t) for i, t in zip(items, targets)]
    expected = [str((x + y) % 10) for x, y in targets]
    b0_only = [str((i.a % 10 + y) % 10) for i, (_, y) in zip(items, targets)]
    hits = sum(o.swapped_top == e for o, e in zip(outcomes, expected)) / len(items)
    assert sum(o.clean_top == i.answer for o, i in zip(outcomes, items)) >= 0.95 * len(items)
    assert hits >= 0.8, f"ones-digit swap {hits:.3f}"
    assert swap_success_rate(outcomes) == pytest.approx(hits)
    # the code carries a0 too: the answer does not follow the injected b0 with the true a0
    assert sum(o.swapped_top == d for o, d in zip(outcomes, b0_only)) <= 0.1 * len(items)
    suppressed = [run_swap(model, i, codes, t, inject=False) for i, t in zip(items, targets)]
    assert sum(o.swapped_top == e for o, e in zip(suppressed, expected)) <= 0.15 * len(items)


def test_carry_swap_moves_the_tens_digit_by_one(model, world, codes):
    items = carry_items(world)
    assert len(items) >= 50
    flipped = [str(i.a // 10 + i.b // 10 + (i.a % 10 + i.b % 10 < 10)) for i in items]
    targets = [carry_target(i.a, i.b) for i in items]
    outcomes = [run_swap(model, i, codes, t) for i, t in zip(items, targets)]
    hits = sum(o.swapped_top == e for o, e in zip(outcomes, flipped)) / len(items)
    assert hits >= 0.75, f"carry swap {hits:.3f}"
    suppressed = [run_swap(model, i, codes, t, inject=False) for i, t in zip(items, targets)]
    assert sum(o.swapped_top == e for o, e in zip(suppressed, flipped)) <= 0.3 * len(items)
