"""`generate(model, prompt, interventions, ...)`: default and steered continuations side by side.

Generation runs the model's own KV cache one token at a time (`docs/algorithm.md` §12.6). The
prompt pass applies every intervention at the prompt positions it selects; each incremental pass
applies the interventions whose positions cover the new position (open-ended slices
`slice(k, None)` and `position=None`, or slices whose stop lies past the prompt), with deltas
taken from that position's freshly computed activations (free mode; attention and MLPs live).
Both continuations draw from their own generator seeded with `seed`, so the same seed gives the
same output and the two differ only where the steering changed the distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from circuit_atlas.errors import InterventionError
from circuit_atlas.interventions.intervene import Interventions
from circuit_atlas.interventions.plan import ClampPlan
from circuit_atlas.interventions.spec import CheckedIntervention, Intervention, check_interventions
from circuit_atlas.models.prompts import Prompt
from circuit_atlas.replacement import ReplacementModel


@dataclass
class Continuation:
    """Generated tokens (prompt excluded), their text, the prompt+continuation text, and the
    `[n_new, V]` logits each token was drawn from (after any final soft-cap)."""

    token_ids: list[int]
    text: str
    full_text: str
    logits: torch.Tensor = field(repr=False)  # [n_new, V]: too large to print


@dataclass
class GenerationResult:
    """Default (no interventions) and steered continuations of the same prompt and seed."""

    prompt_tokens: torch.Tensor
    prompt: str
    default: Continuation
    steered: Continuation
    interventions: list[Intervention]
    temperature: float
    top_p: float
    seed: int

    def to_dict(self) -> dict:
        def side(c: Continuation) -> dict:
            return {"token_ids": c.token_ids, "text": c.text, "full_text": c.full_text}

        return {
            "prompt": self.prompt,
            "interventions": [i.to_dict() for i in self.interventions],
            "descriptions": [i.describe() for i in self.interventions],
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "default": side(self.default),
            "steered": side(self.steered),
        }


def generate(
    model: ReplacementModel,
    prompt: Prompt,
    interventions: Interventions = (),
    max_new_tokens: int = 20,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    stop_at_eos: bool = True,
) -> GenerationResult:
    """Continue `prompt` with and without `interventions` (free mode, KV cache).

    temperature 0 is greedy decoding; otherwise tokens are sampled from `softmax(logits / T)`
    restricted to the smallest top set whose probability reaches `top_p` (`sample_token`: tiny
    temperatures approach greedy decoding, tiny `top_p` keeps the most likely token).
    """
    _check_sampling(max_new_tokens, temperature, top_p, seed)
    tokens = model.tokenize(prompt)
    prompt_length = int(tokens.shape[0])
    _check_length(model, prompt_length, max_new_tokens)
    checked = check_interventions(
        interventions,
        n_layers=model.n_layers,
        n_features=model.transcoders.n_features,
        prompt_length=prompt_length,
        n_zeroed=min(model.n_zeroed_positions, prompt_length),
        total_length=prompt_length + max(max_new_tokens - 1, 0),
    )
    settings = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                    stop_at_eos=stop_at_eos)
    default = _continue(model, tokens, [], **settings)
    steered = _continue(model, tokens, checked, **settings)
    return GenerationResult(
        prompt_tokens=tokens,
        prompt=_decode(model, tokens.tolist()),
        default=default,
        steered=steered,
        interventions=[c.source for c in checked],
        temperature=float(temperature),
        top_p=float(top_p),
        seed=int(seed),
    )


def _check_sampling(max_new_tokens, temperature, top_p, seed) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise InterventionError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise InterventionError(f"temperature must be a finite number ≥ 0, got {temperature!r}")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise InterventionError(f"top_p must lie in (0, 1], got {top_p!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InterventionError(f"seed must be an int, got {seed!r}")


def _check_length(model, prompt_length: int, max_new_tokens: int) -> None:
    limit = model.lm.max_positions
    if limit is not None and prompt_length + max_new_tokens > limit:
        raise InterventionError(
            f"the prompt ({prompt_length} tokens) plus max_new_tokens={max_new_tokens} exceeds the "
            f"{limit} positions model {model.lm.name!r} accepts"
        )


def _decode(model, ids: list[int]) -> str:
    tokenizer = model.tokenizer
    return " ".join(str(i) for i in ids) if tokenizer is None else tokenizer.decode(ids)


def _continue(model, tokens: torch.Tensor, checked: list[CheckedIntervention], *, max_new_tokens: int,
              temperature: float, top_p: float, seed: int, stop_at_eos: bool) -> Continuation:
    """The token loop: one prompt pass, then one cached pass per new token."""
    generator = torch.Generator().manual_seed(seed)
    eos = getattr(model.tokenizer, "eos_token_id", None) if stop_at_eos else None
    stepper = _CachedStepper(model, checked)
    new_ids: list[int] = []
    step_logits: list[torch.Tensor] = []
    position = int(tokens.shape[0])
    with torch.no_grad():
        logits = stepper.step(tokens, offset=0) if max_new_tokens else None
        while len(new_ids) < max_new_tokens:
            step_logits.append(logits.float().cpu())
            token = sample_token(logits, temperature, top_p, generator)
            new_ids.append(token)
            if (eos is not None and token == eos) or len(new_ids) == max_new_tokens:
                break
            logits = stepper.step(torch.tensor([token], device=tokens.device), offset=position)
            position += 1
    vocab = model.lm.vocab_size
    return Continuation(
        token_ids=new_ids,
        text=_decode(model, new_ids),
        full_text=_decode(model, tokens.tolist() + new_ids),
        logits=torch.stack(step_logits) if step_logits else torch.zeros(0, vocab),
    )


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """Greedy for temperature 0; else nucleus sampling from `softmax(logits / temperature)`.

    Any positive temperature and top_p is well defined: the softmax is taken of
    `(logits − max) / temperature` in float64, so a tiny temperature (1e-300, even the smallest
    subnormal) puts all the mass on the most likely token(s) — the greedy limit — instead of
    overflowing to NaN, and the nucleus always keeps the most likely token, however small
    `top_p` is. Non-finite logits (a steering value too large for the model's precision) are an
    `InterventionError`. Sampling happens on the CPU with a CPU generator, so a seed gives the
    same tokens on any device.
    """
    logits = logits.double().cpu()
    if not bool(torch.isfinite(logits).all()):
        raise InterventionError(
            "the model's next-token logits are not finite (NaN or infinite); the intervention "
            "values are too large for this model's precision")
    if temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax((logits - logits.max()) / temperature, dim=-1)
    if top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=0) - sorted_probs  # mass of strictly better tokens
        drop = before >= top_p
        drop[0] = False  # the most likely token is always in the nucleus
        sorted_probs[drop] = 0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


class _CachedStepper:
    """Runs the model one step at a time with its KV cache (`LanguageModel.cached_step`), the
    clamp plan of the new positions as the output edit, so steering uses the production hooks."""

    def __init__(self, model, checked: list[CheckedIntervention]) -> None:
        self.model = model
        self.checked = checked
        self.cache = None

    def step(self, ids: torch.Tensor, *, offset: int) -> torch.Tensor:
        """Logits `[V]` at the last of `ids` (absolute positions `offset..offset+len−1`)."""
        plan = ClampPlan(self.model.transcoders, self.checked, offset=offset, length=int(ids.shape[0]),
                         n_zeroed=min(self.model.n_zeroed_positions, offset + int(ids.shape[0])))
        logits, self.cache = self.model.lm.cached_step(
            ids, self.cache, past_length=offset, input_hook=self.model.input_hook,
            output_hook=self.model.output_hook, output_edit=plan if plan.entries else None)
        return logits
