"""The swap intervention of the two-hop case study: replace the intermediate region inside the model.

For a held-out question "the capital of the region containing dallas is" (answer austin, via
texas), suppress texas's features and inject those of the swap region (e.g. california), in
layers 0-2 at the city and final positions. If the model really composes through an internal
"region" representation, the answer becomes the other region's capital (sacramento) although the
prompt still names dallas.

Which features are "texas's features": its **region code**, the features that fire, at a given
(layer, position), on at least `share` (80 %) of the composed questions about texas's *training*
cities, with their mean activation there. A region code is a supernode in the paper's sense. It is
measured from activations rather than read from labels because the demo's transcoders represent
a region partly with region-specific features and partly with features shared by several regions
(docs/case-studies.md shows both); the code covers both kinds. Held-out cities are never used to
build a code.

The swap ablates the features of the true region's code that are not in the swap region's code
(where active on the prompt) and sets every feature of the swap region's code to its mean value,
in the free intervention mode: the real model runs with those features clamped and layer 3, which
turns the region into the capital, is recomputed from the edited residual stream.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from circuit_atlas.demo.toyworld import TWO_HOP_FRAME, TwoHopItem, World
from circuit_atlas.interventions import Intervention, intervene

SWAP_LAYERS = (0, 1, 2)
SWAP_POSITIONS = (-2, -1)  # the city and the final "is"
CODE_SHARE = 0.8

Site = tuple[int, int]  # (layer, position counted from the end)


@dataclass(frozen=True)
class RegionCode:
    """Features (with mean activation) that fire for most training cities of `region`, per site."""

    region: str
    cities: tuple[str, ...]
    features: dict[Site, dict[int, float]]

    def size(self) -> int:
        return sum(len(f) for f in self.features.values())


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


def _dense(model, prompt: str) -> torch.Tensor:
    return model.run(model.tokenize(prompt)).activations.to_dense()


def region_codes(model, world: World, *, layers: Sequence[int] = SWAP_LAYERS,
                 positions: Sequence[int] = SWAP_POSITIONS,
                 share: float = CODE_SHARE) -> dict[str, RegionCode]:
    """The region code of every region, from its training cities' composed questions."""
    training = set(world.training_cities)
    codes = {}
    for region in world.capitals:
        cities = tuple(c for c, r in world.city_region.items() if r == region and c in training)
        acts = torch.stack([_dense(model, TWO_HOP_FRAME.format(city=c)) for c in cities])
        features: dict[Site, dict[int, float]] = {}
        for layer in layers:
            for position in positions:
                site = acts[:, layer, position]  # [cities, F]
                on = site > 0
                frequent = (on.float().mean(0) >= share).nonzero().flatten().tolist()
                features[(layer, position)] = {
                    f: float(site[on[:, f], f].mean()) for f in frequent}
        codes[region] = RegionCode(region, cities, features)
    return codes


def swap_interventions(model, item: TwoHopItem, codes: dict[str, RegionCode], *,
                       suppress: bool = True,
                       inject: bool = True) -> tuple[list[Intervention], int, int]:
    """(interventions, n suppressed, n injected) for one question.

    `suppress=False` / `inject=False` give the two halves alone (the case study's controls).
    """
    clean = _dense(model, item.prompt)
    true, other = codes[item.region].features, codes[item.swap_region].features
    result: list[Intervention] = []
    n_off = n_on = 0
    for (layer, position), mine in true.items():
        theirs = other.get((layer, position), {})
        off = sorted(f for f in mine if f not in theirs and clean[layer, position, f] > 0)
        if suppress and off:
            result.append(Intervention(layer, position, off, ablate=True))
            n_off += len(off)
        if inject:
            result += [Intervention(layer, position, f, value=v) for f, v in sorted(theirs.items())]
            n_on += len(theirs)
    return result, n_off, n_on


def run_swap(model, item: TwoHopItem, codes: dict[str, RegionCode], **options) -> SwapOutcome:
    """Apply the swap to one question (free mode) and read the top answer before and after."""
    interventions, n_off, n_on = swap_interventions(model, item, codes, **options)
    result = intervene(model, item.prompt, interventions, mode="free", top_k=1)
    swap_id = model.tokenizer(" " + item.swap_capital, add_special_tokens=False)["input_ids"][0]
    return SwapOutcome(item, _word(result.top_before[0].token), _word(result.top_after[0].token),
                       result.probability(swap_id), n_off, n_on)


def swap_success_rate(outcomes: Iterable[SwapOutcome]) -> float:
    """Share of questions whose top answer became the swap region's capital."""
    outcomes = list(outcomes)
    return sum(o.swapped for o in outcomes) / len(outcomes) if outcomes else 0.0


def _word(token: str) -> str:
    return token.replace("▁", " ").strip()
