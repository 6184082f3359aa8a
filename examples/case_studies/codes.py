"""Feature codes: the supernode a concept occupies, measured from activations, and its swap.

Every demo case study confirms a circuit the same way: measure which transcoder features carry a
concept (a region, a word meaning, a digit sum) on prompts that have it, then, on a held-out
prompt, suppress the true concept's features and inject another concept's. If the model routes the
concept through those features, its answer follows the injected concept.

A **code** is, per site (layer, position counted from the end), the features that fire on at
least `share` of the measuring prompts, with their mean activation there. Codes are measured from
activations rather than read from labels because the demo's transcoders describe a concept partly
with specific features and partly with features shared by several concepts; a code covers both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from circuit_atlas.interventions import Intervention

Site = tuple[int, int]  # (layer, position counted from the end)
DEFAULT_SHARE = 0.8


@dataclass(frozen=True)
class FeatureCode:
    """Features (with mean activation) that fire on most prompts of one concept, per site."""

    name: str
    n_prompts: int
    features: dict[Site, dict[int, float]]

    def size(self) -> int:
        return sum(len(f) for f in self.features.values())


def dense_activations(model, prompt: str) -> torch.Tensor:
    """Transcoder activations `[layers, positions, features]` of `prompt` (dense: demo-sized)."""
    return model.run(model.tokenize(prompt)).activations.to_dense()


def measure_code(model, name: str, prompts: Sequence[str], *, layers: Sequence[int],
                 positions: Sequence[int], share: float = DEFAULT_SHARE) -> FeatureCode:
    """The code of the concept that all `prompts` share. Positions count from the end, so the
    prompts may differ in length before the measured sites (which must mean the same in each)."""
    acts = [dense_activations(model, p) for p in prompts]
    features: dict[Site, dict[int, float]] = {}
    for layer in layers:
        for position in positions:
            site = torch.stack([a[layer, position] for a in acts])  # [prompts, F]
            on = site > 0
            frequent = (on.float().mean(0) >= share).nonzero().flatten().tolist()
            features[(layer, position)] = {f: float(site[on[:, f], f].mean()) for f in frequent}
    return FeatureCode(name, len(prompts), features)


def swap_interventions(clean: torch.Tensor, true: FeatureCode, other: FeatureCode, *,
                       suppress: bool = True,
                       inject: bool = True) -> tuple[list[Intervention], int, int]:
    """(interventions, n suppressed, n injected) replacing `true` by `other` on a prompt whose
    dense activations are `clean`.

    Suppression ablates the features of the true code that are not in the other code and are
    active on the prompt; injection sets every feature of the other code to its mean value.
    `suppress=False` / `inject=False` give the two halves alone (the case studies' controls).
    """
    result: list[Intervention] = []
    n_off = n_on = 0
    for (layer, position), mine in true.features.items():
        theirs = other.features.get((layer, position), {})
        off = sorted(f for f in mine if f not in theirs and clean[layer, position, f] > 0)
        if suppress and off:
            result.append(Intervention(layer, position, off, ablate=True))
            n_off += len(off)
        if inject:
            result += [Intervention(layer, position, f, value=v) for f, v in sorted(theirs.items())]
            n_on += len(theirs)
    return result, n_off, n_on


def answer_word(token: str) -> str:
    """A decoded answer token as a bare word (word-start marker and spaces removed)."""
    return token.replace("▁", " ").strip()


def first_token_id(model, word: str) -> int:
    """The id of `word` as it appears after a space (how every demo answer is tokenized)."""
    return model.tokenizer(" " + word, add_special_tokens=False)["input_ids"][0]


def share_true(flags: Iterable[bool]) -> float:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else 0.0
