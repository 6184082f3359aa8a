"""The addition case study: lookup-table features at the second operand's ones digit.

The toy world trains "a+b=<a+b>" for 0 <= a, b < 100 (some pairs held out). Two next-token
predictions depend on the operands' ones digits a0 = a % 10 and b0 = b % 10 only:

- the **ones digit** of the answer, on "a+b=T" where T are the digits already written:
  (a0 + b0) % 10;
- the **carry** into the tens digit, on "a+b=": the first answer digit is
  a // 10 + b // 10 + [a0 + b0 >= 10] (for sums below 100).

What the tools show (see docs/case-studies/addition.md): the graph of a held-out sum routes the
answer through layer-0 features at the position of b0, which fire for *combinations* (a0, b0),
like the paper's "_6 + _9" lookup-table features: layer-0 attention has already brought a0 there.

The confirming intervention swaps that combination inside the model. The **combination code**
of (a0, b0) (`codes.FeatureCode`) holds the features that fire at b0's position, layers 0-2, on at
least 80 % of *training* prompts with those ones digits (held-out pairs are never used). On a
held-out prompt, the swap suppresses the true combination's code and injects that of another
combination (a0', b0') in free mode; layer 3 and every later position are recomputed. The
prediction is pure arithmetic: the ones digit becomes (a0' + b0') % 10, and the first digit
a // 10 + b // 10 + [a0' + b0' >= 10]. The swapped combination changes *both* digits so that the
three readings "follows b0' alone", "follows a0' alone" and "follows the combination" predict
different answers.

Why codes are measured on "a+b=" at b0's position: the model is causal, so activations at b0 are
the same whatever follows; one code serves both the ones-digit prompts ("a+b=T", b0 further from
the end) and the carry prompts. Only two-digit operands are used so b0 always sits after "+" and
a tens digit; sums >= 100 are kept for the ones digit (T = "1" + tens) but left out of the carry
study, whose first digit would be the hundreds "1".
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tqdm import tqdm

from .codes import (DEFAULT_SHARE, FeatureCode, dense_activations, measure_code,
                                      share_true, swap_interventions)
from circuit_atlas.demo.toyworld import ADDITION_FRAME, World
from circuit_atlas.interventions import intervene

CODE_LAYERS = (0, 1, 2)
CODE_SHARE = DEFAULT_SHARE
PROMPTS_PER_COMBO = 20
B0_FROM_END = -2  # b0's position in "a+b=", counted from the end
ONES_SHIFT = (3, 5)  # the ones-digit swap's target combination: (a0 + 3, b0 + 5) mod 10
Combo = tuple[int, int]


def two_digit(a: int, b: int) -> bool:
    """Both operands have two digits, so b's ones digit follows "+" and a tens digit."""
    return 10 <= a < 100 and 10 <= b < 100


def combo(a: int, b: int) -> Combo:
    """The operands' ones digits (a0, b0)."""
    return a % 10, b % 10


def training_pairs(world: World) -> list[tuple[int, int]]:
    """Every two-digit pair the training corpus may contain (i.e. not held out)."""
    held = set(world.held_out_additions)
    return [(a, b) for a in range(10, 100) for b in range(10, 100) if (a, b) not in held]


def held_out_pairs(world: World) -> list[tuple[int, int]]:
    """The held-out pairs with two-digit operands (the others have a different layout)."""
    return [(a, b) for a, b in sorted(world.held_out_additions) if two_digit(a, b)]


@dataclass(frozen=True)
class AdditionItem:
    """"a+b=<written>": the next token is the digit of a + b after `written`."""

    a: int
    b: int
    written: str = ""

    @property
    def prompt(self) -> str:
        return ADDITION_FRAME.format(a=self.a, b=self.b) + self.written

    @property
    def answer(self) -> str:
        """The correct next digit (the toy world's ground truth)."""
        return str(self.a + self.b)[len(self.written)]

    @property
    def b0_position(self) -> int:
        """b's ones digit, counted from the end of the prompt."""
        return B0_FROM_END - len(self.written)

    @property
    def combo(self) -> Combo:
        return combo(self.a, self.b)


def ones_digit_items(world: World) -> list[AdditionItem]:
    """Held-out sums with every digit but the last written: the next token is (a0 + b0) % 10."""
    return [AdditionItem(a, b, str(a + b)[:-1]) for a, b in held_out_pairs(world)]


def carry_target(a: int, b: int) -> Combo:
    """The combination nearest to (a0, b0) whose carry differs (|da| + |db|, then |da|, then
    the smaller digits): the carry swap's target. Pure arithmetic, never the model's output."""
    a0, b0 = combo(a, b)
    carry = a0 + b0 >= 10
    flipped = [(x, y) for x in range(10) for y in range(10) if (x + y >= 10) != carry]
    return min(flipped, key=lambda c: (abs(c[0] - a0) + abs(c[1] - b0), abs(c[0] - a0), c))


def carry_items(world: World) -> list[AdditionItem]:
    """Held-out "a+b=" with a + b < 100 whose carry-flipped answer also stays below 100 (a
    first digit of 10 would be two tokens)."""
    items = []
    for a, b in held_out_pairs(world):
        x, y = carry_target(a, b)
        if a + b < 100 and a // 10 + b // 10 + (x + y >= 10) <= 9:
            items.append(AdditionItem(a, b))
    return items


def ones_target(item: AdditionItem) -> Combo:
    """The ones-digit swap's target: both digits shifted (by `ONES_SHIFT`)."""
    a0, b0 = item.combo
    return (a0 + ONES_SHIFT[0]) % 10, (b0 + ONES_SHIFT[1]) % 10


def predicted_digit(item: AdditionItem, target: Combo) -> str:
    """The next digit if the model adds the injected ones digits `target` instead of its own."""
    x, y = target
    if item.written:  # ones digit
        return str((x + y) % 10)
    return str(item.a // 10 + item.b // 10 + (x + y >= 10))  # first digit (sum < 100)


def combo_codes(model, world: World, combos: Iterable[Combo] | None = None, *,
                n_prompts: int = PROMPTS_PER_COMBO, layers: Sequence[int] = CODE_LAYERS,
                share: float = CODE_SHARE, seed: int = 0,
                progress: bool = False) -> dict[Combo, FeatureCode]:
    """The code of each ones-digit combination (default: all 100), at b0's position on
    "a+b=" prompts of up to `n_prompts` seeded training pairs each."""
    by_combo: dict[Combo, list[tuple[int, int]]] = {}
    for a, b in training_pairs(world):
        by_combo.setdefault(combo(a, b), []).append((a, b))
    wanted = sorted(set(by_combo) if combos is None else set(combos))
    rng = random.Random(seed)
    codes = {}
    for c in tqdm(wanted, desc="combination codes", disable=not progress):
        pairs = by_combo[c]
        pairs = rng.sample(pairs, min(n_prompts, len(pairs)))
        codes[c] = measure_code(model, f"{c[0]}+{c[1]}", [ADDITION_FRAME.format(a=a, b=b)
                                                          for a, b in pairs],
                                layers=layers, positions=(B0_FROM_END,), share=share)
    return codes


def at_position(code: FeatureCode, position: int) -> FeatureCode:
    """`code` moved from b0's position in "a+b=" to `position` (b0's position in another prompt)."""
    moved = {(layer, position): feats for (layer, _), feats in code.features.items()}
    return FeatureCode(code.name, code.n_prompts, moved)


@dataclass(frozen=True)
class SwapOutcome:
    """One held-out prompt before and after replacing its combination code by `target`'s."""

    item: AdditionItem
    target: Combo
    clean_top: str
    swapped_top: str
    target_prob: float
    n_suppressed: int
    n_injected: int

    @property
    def predicted(self) -> str:
        return predicted_digit(self.item, self.target)

    @property
    def clean_correct(self) -> bool:
        return self.clean_top == self.item.answer

    @property
    def swapped(self) -> bool:
        return self.swapped_top == self.predicted


def run_swap(model, item: AdditionItem, codes: dict[Combo, FeatureCode], target: Combo, *,
             suppress: bool = True, inject: bool = True) -> SwapOutcome:
    """Swap `item`'s combination code for `target`'s at b0's position (free mode) and read the
    top next token before and after. `suppress=False` / `inject=False` are the controls."""
    true = at_position(codes[item.combo], item.b0_position)
    other = at_position(codes[target], item.b0_position)
    interventions, n_off, n_on = swap_interventions(dense_activations(model, item.prompt), true,
                                                    other, suppress=suppress, inject=inject)
    result = intervene(model, item.prompt, interventions, mode="free", top_k=1)
    predicted = model.tokenizer.convert_tokens_to_ids(predicted_digit(item, target))
    return SwapOutcome(item, target, result.top_before[0].token, result.top_after[0].token,
                       result.probability(predicted), n_off, n_on)


def swap_success_rate(outcomes: Iterable[SwapOutcome]) -> float:
    """Share of prompts whose top next token became the arithmetic prediction."""
    return share_true(o.swapped for o in outcomes)


def firing_table(model, pairs: Iterable[tuple[int, int]], layer: int,
                 feature: int) -> list[list[float | None]]:
    """[a0][b0]: share of "a+b=" prompts of `pairs` on which `feature` fires at b0's position
    (None where no pair has those ones digits). A lookup-table feature depends on a0 too."""
    hits: dict[Combo, list[bool]] = {}
    for a, b in pairs:
        acts = dense_activations(model, ADDITION_FRAME.format(a=a, b=b))
        hits.setdefault(combo(a, b), []).append(bool(acts[layer, B0_FROM_END, feature] > 0))
    return [[share_true(hits[(x, y)]) if (x, y) in hits else None for y in range(10)]
            for x in range(10)]
