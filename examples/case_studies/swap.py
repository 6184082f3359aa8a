"""The swap intervention of the two-hop case study: replace the intermediate region inside the model.

For a held-out question "the capital of the region containing dallas is" (answer austin, via
texas), suppress texas's features and inject those of the swap region (e.g. california), in
layers 0-2 at the city and final positions. If the model really composes through an internal
"region" representation, the answer becomes the other region's capital (sacramento) although the
prompt still names dallas.

Which features are "texas's features": its **region code** (`codes.FeatureCode`), the features
that fire, at a given (layer, position), on at least `share` (80 %) of the composed questions about
texas's *training* cities, with their mean activation there: a supernode in the paper's sense.
Held-out cities are never used to build a code.

The swap ablates the features of the true region's code that are not in the swap region's code
(where active on the prompt) and sets every feature of the swap region's code to its mean value,
in the free intervention mode: the real model runs with those features clamped and layer 3, which
turns the region into the capital, is recomputed from the edited residual stream.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .codes import (DEFAULT_SHARE, FeatureCode, answer_word, dense_activations,
                                      first_token_id, measure_code, share_true)
from .codes import swap_interventions as code_swap_interventions
from circuit_atlas.demo.toyworld import TWO_HOP_FRAME, TwoHopItem, World
from circuit_atlas.interventions import Intervention, intervene

SWAP_LAYERS = (0, 1, 2)
SWAP_POSITIONS = (-2, -1)  # the city and the final "is"
CODE_SHARE = DEFAULT_SHARE


@dataclass(frozen=True)
class RegionCode(FeatureCode):
    """A region's feature code, with the training cities it was measured on."""

    cities: tuple[str, ...] = ()

    @property
    def region(self) -> str:
        return self.name


@dataclass(frozen=True)
class SwapOutcome:
    """One held-out question before and after the swap."""

    item: TwoHopItem
    clean_top: str
    swapped_top: str
    swap_capital_prob: float
    n_suppressed: int
    n_injected: int

    @property
    def clean_correct(self) -> bool:
        return self.clean_top == self.item.answer

    @property
    def swapped(self) -> bool:
        return self.swapped_top == self.item.swap_capital


def region_codes(model, world: World, *, layers: Sequence[int] = SWAP_LAYERS,
                 positions: Sequence[int] = SWAP_POSITIONS,
                 share: float = CODE_SHARE) -> dict[str, RegionCode]:
    """The region code of every region, from its training cities' composed questions."""
    training = set(world.training_cities)
    codes = {}
    for region in world.capitals:
        cities = tuple(c for c, r in world.city_region.items() if r == region and c in training)
        code = measure_code(model, region, [TWO_HOP_FRAME.format(city=c) for c in cities],
                            layers=layers, positions=positions, share=share)
        codes[region] = RegionCode(region, code.n_prompts, code.features, cities)
    return codes


def swap_interventions(model, item: TwoHopItem, codes: dict[str, RegionCode], *,
                       suppress: bool = True,
                       inject: bool = True) -> tuple[list[Intervention], int, int]:
    """(interventions, n suppressed, n injected) for one question.

    `suppress=False` / `inject=False` give the two halves alone (the case study's controls).
    """
    return code_swap_interventions(dense_activations(model, item.prompt), codes[item.region],
                                   codes[item.swap_region], suppress=suppress, inject=inject)


def run_swap(model, item: TwoHopItem, codes: dict[str, RegionCode], **options) -> SwapOutcome:
    """Apply the swap to one question (free mode) and read the top answer before and after."""
    interventions, n_off, n_on = swap_interventions(model, item, codes, **options)
    result = intervene(model, item.prompt, interventions, mode="free", top_k=1)
    swap_id = first_token_id(model, item.swap_capital)
    return SwapOutcome(item, answer_word(result.top_before[0].token),
                       answer_word(result.top_after[0].token),
                       result.probability(swap_id), n_off, n_on)


def swap_success_rate(outcomes: Iterable[SwapOutcome]) -> float:
    """Share of questions whose top answer became the swap region's capital."""
    return share_true(o.swapped for o in outcomes)
