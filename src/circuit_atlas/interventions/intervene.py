"""`intervene(model, prompt, interventions, mode=...)`: one intervened pass, compared with the clean one.

Modes (`docs/algorithm.md` §12.2):

- ``"free"``: the real model runs with the features clamped; every later layer (attention, norms,
  MLPs, and so the features they encode) is recomputed from the perturbed residual stream.
  Deltas are taken from the activations of this pass. `freeze_attention=True` replays the clean
  attention patterns instead of recomputing them.
- ``"constrained"`` (the paper's constrained patching): attention patterns and norm scales are
  replayed from the clean pass and the MLP outputs of `constrained_layers` (default: all layers)
  are held at their clean values with the transcoder skip path live. Effects then reach the
  output only through the frozen replacement paths (residual stream, attention OV, skips), so
  with all layers constrained an ablation changes every downstream feature's pre-activation and
  every target logit by exactly minus its attribution edge. Deltas are taken from the clean
  activations, and interventions must lie inside the constrained range.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch

from circuit_atlas.errors import InterventionError
from circuit_atlas.interventions.plan import Applied, ClampPlan, HeldOutputs
from circuit_atlas.interventions.spec import (
    CheckedIntervention,
    Intervention,
    Supernode,
    check_interventions,
)
from circuit_atlas.models import ForwardRecord, FreezeSpec
from circuit_atlas.models.freeze import LIVE, REPLAY
from circuit_atlas.models.prompts import Prompt
from circuit_atlas.replacement import ReplacementModel, ReplacementRun

# "free": the real model runs on with the features clamped; "constrained": attention, norms and
# the MLP outputs of the constrained layers are held at their clean values (module docstring).
Mode = Literal["free", "constrained"]
MODES: tuple[str, ...] = get_args(Mode)
Interventions = Iterable[Intervention | Supernode] | Intervention | Supernode


@dataclass(frozen=True)
class InterventionSettings:
    """How one `intervene` call runs, once checked: the mode, the constrained layers (None in
    free mode), whether attention is frozen (free mode only), how many top tokens to report."""

    mode: Mode
    constrained_layers: tuple[int, ...] | None
    freeze_attention: bool
    top_k: int


@dataclass(frozen=True)
class TokenProb:
    """A vocabulary entry with its probability (and logit) at the last position."""

    token_id: int
    token: str
    prob: float
    logit: float


@dataclass
class FeatureChanges:
    """Feature activations that differ between the clean and the intervened pass.

    `indices` int64 [n, 3] holds (layer, position, feature); `before` / `after` float32 [n] the
    post-activation values; rows are sorted by |after − before|, largest first.
    """

    indices: torch.Tensor
    before: torch.Tensor
    after: torch.Tensor

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def rows(self, limit: int | None = None) -> list[dict]:
        count = len(self) if limit is None else min(limit, len(self))
        return [
            {"layer": int(l), "position": int(p), "feature": int(f), "before": float(b), "after": float(a)}
            for (l, p, f), b, a in zip(self.indices[:count].tolist(), self.before[:count], self.after[:count])
        ]


@dataclass
class InterventionResult:
    """The intervened pass next to the clean one, for one prompt of P tokens.

    - `logits` / `clean_logits` `[P, V]`: model outputs (after any final soft-cap).
    - `top_before` / `top_after`: most likely next tokens at the last position.
    - `applied`: each intervention as applied (positions, features, value it had, value set).
    - `activations_before` / `activations_after`: sparse `[L, P, F]`. After = the activations the
      intervened pass's inputs encode to (`docs/algorithm.md` §12.4), except that intervened
      entries hold the value they were set to. In constrained mode the other features of constrained layers
      were held at their clean values during the pass; their "after" shows the direct effect.
    - `changes`: the entries where before and after differ.
    - `mlp_inputs` / `clean_mlp_inputs` `[L, P, d]` (input-hook values) and `final_hidden` /
      `clean_final_hidden` `[P, d]` (final-norm outputs): exact readouts of feature
      pre-activations `⟨w_enc, x⟩` and pre-soft-cap logits, which is what attribution edges predict.
    """

    tokens: torch.Tensor
    token_strings: list[str]
    mode: Mode
    constrained_layers: tuple[int, ...] | None
    freeze_attention: bool
    logits: torch.Tensor = field(repr=False)
    clean_logits: torch.Tensor = field(repr=False)
    top_before: list[TokenProb]
    top_after: list[TokenProb]
    applied: list[Applied] = field(repr=False)
    activations_before: torch.Tensor = field(repr=False)
    activations_after: torch.Tensor = field(repr=False)
    changes: FeatureChanges
    mlp_inputs: torch.Tensor = field(repr=False)
    clean_mlp_inputs: torch.Tensor = field(repr=False)
    final_hidden: torch.Tensor = field(repr=False)
    clean_final_hidden: torch.Tensor = field(repr=False)
    interventions: list[Intervention] = field(default_factory=list)

    def probability(self, token_id: int, *, after: bool = True) -> float:
        logits = self.logits if after else self.clean_logits
        return float(torch.softmax(logits[-1].float(), dim=-1)[token_id])

    def to_dict(self, max_changes: int = 50) -> dict:
        """A JSON-ready summary (for the web Steer panel and the CLI)."""
        def tokens(items: list[TokenProb]) -> list[dict]:
            return [{"token_id": t.token_id, "token": t.token, "prob": t.prob, "logit": t.logit} for t in items]

        return {
            "mode": self.mode,
            "constrained_layers": None if self.constrained_layers is None else list(self.constrained_layers),
            "freeze_attention": self.freeze_attention,
            "tokens": self.token_strings,
            "interventions": [i.to_dict() for i in self.interventions],
            "descriptions": [i.describe() for i in self.interventions],
            "top_before": tokens(self.top_before),
            "top_after": tokens(self.top_after),
            "n_changed_features": len(self.changes),
            "changed_features": self.changes.rows(max_changes),
        }


def intervene(
    model: ReplacementModel,
    prompt: Prompt,
    interventions: Interventions,
    *,
    mode: Mode = "free",
    constrained_layers: Iterable[int] | None = None,
    freeze_attention: bool = False,
    top_k: int = 10,
    run: ReplacementRun | None = None,
) -> InterventionResult:
    """Run `prompt` through `model` (a `ReplacementModel`) with `interventions` applied.

    `constrained_layers` (constrained mode only; default all layers): the layers whose MLP outputs
    are held. `freeze_attention` (free mode): replay the clean attention patterns. `run`: a clean
    `ReplacementRun` of the same tokens to reuse (e.g. when validating many nodes).
    """
    mode, layers = check_mode(mode, constrained_layers, model.n_layers)
    tokens = model.tokenize(prompt)
    run = clean_run(model, tokens, run)
    checked = check_interventions(
        interventions,
        n_layers=model.n_layers,
        n_features=model.transcoders.n_features,
        prompt_length=int(tokens.shape[0]),
        n_zeroed=run.n_zeroed_positions,
    )
    if layers is not None:
        outside = sorted({c.layer for c in checked} - set(layers))
        if outside:
            raise InterventionError(
                f"interventions on layer(s) {outside} lie outside constrained_layers {list(layers)}; "
                "their writes would be dropped"
            )
    held = None
    if mode == "constrained":
        held = HeldOutputs(frozenset(layers), run.mlp_outputs, run.mlp_inputs, run.activations)
    plan = ClampPlan(model.transcoders, checked, offset=0, length=int(tokens.shape[0]),
                     n_zeroed=run.n_zeroed_positions, held=held)
    freeze = _freeze(mode, freeze_attention, run.record)
    with torch.no_grad():
        record = model.lm.forward(
            tokens[None], input_hook=model.input_hook, output_hook=model.output_hook, freeze=freeze,
            output_edit=plan, record_internals=False,
        )
    settings = InterventionSettings(mode, layers, freeze_attention and mode == "free", top_k)
    return _result(model, run, record, plan, checked, settings)


def check_mode(mode: Mode, constrained_layers: Iterable[int] | None,
               n_layers: int) -> tuple[Mode, tuple[int, ...] | None]:
    """Validate the mode and resolve the constrained range (None in free mode)."""
    if mode not in MODES:
        raise InterventionError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "free":
        if constrained_layers is not None:
            raise InterventionError("constrained_layers only applies to mode='constrained'")
        return mode, None
    if constrained_layers is None:
        return mode, tuple(range(n_layers))
    try:
        layers = tuple(sorted({int(l) for l in constrained_layers}))
    except (TypeError, ValueError):
        raise InterventionError(
            f"constrained_layers must be an iterable of layer indices, got {constrained_layers!r}"
        ) from None
    if not layers:
        raise InterventionError("constrained_layers is empty")
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad:
        raise InterventionError(f"constrained_layers: layer {bad[0]} is out of range 0..{n_layers - 1}")
    return mode, layers


def clean_run(model: ReplacementModel, tokens: torch.Tensor,
              run: ReplacementRun | None = None) -> ReplacementRun:
    """The clean `ReplacementRun` of `tokens`, reusing `run` when it is for the same tokens."""
    if run is None:
        return model.run(tokens)
    if run.tokens.shape != tokens.shape or not torch.equal(run.tokens.to(tokens.device), tokens):
        raise InterventionError("the `run` passed to intervene was computed for a different prompt")
    return run


def _freeze(mode: Mode, freeze_attention: bool, record: ForwardRecord) -> FreezeSpec:
    if mode == "constrained":
        return FreezeSpec.replayed(record)
    if freeze_attention:
        return FreezeSpec(attention=REPLAY, norms=LIVE, replay_from=record)
    return FreezeSpec.live()


def top_tokens(model: ReplacementModel, logits: torch.Tensor, k: int) -> list[TokenProb]:
    """The `k` most likely tokens of a `[V]` logit vector."""
    probs = torch.softmax(logits.float(), dim=-1)
    values, ids = torch.topk(probs, min(k, probs.shape[-1]))
    strings = model.lm.token_strings(ids)
    return [TokenProb(int(i), s, float(p), float(logits[i])) for i, s, p in zip(ids.tolist(), strings, values)]


def _result(model: ReplacementModel, run: ReplacementRun, record: ForwardRecord, plan: ClampPlan,
            checked: Sequence[CheckedIntervention], settings: InterventionSettings) -> InterventionResult:
    inputs = torch.stack([x[0] for x in record.inputs])
    after, changes = _activations(model, run, inputs, plan.applied)
    logits = record.logits[0]
    return InterventionResult(
        tokens=run.tokens,
        token_strings=model.lm.token_strings(run.tokens),
        mode=settings.mode,
        constrained_layers=settings.constrained_layers,
        freeze_attention=settings.freeze_attention,
        logits=logits,
        clean_logits=run.logits,
        top_before=top_tokens(model, run.logits[-1], settings.top_k),
        top_after=top_tokens(model, logits[-1], settings.top_k),
        applied=plan.applied,
        activations_before=run.activations,
        activations_after=after,
        changes=changes,
        mlp_inputs=inputs,
        clean_mlp_inputs=run.mlp_inputs,
        final_hidden=record.final_hidden[0],
        clean_final_hidden=run.final_hidden,
        interventions=[c.source for c in checked],
    )


def _activations(model: ReplacementModel, run: ReplacementRun, inputs: torch.Tensor,
                 applied: Sequence[Applied]) -> tuple[torch.Tensor, FeatureChanges]:
    """Sparse `[L, P, F]` activations of the intervened pass (set values shown) and the changes.

    One layer at a time, so only one dense `[P, F]` slice exists at once (F can be ~10⁵–10⁶).
    """
    tc, zeroed = model.transcoders, run.n_zeroed_positions
    sparse_parts, changed, before_values, after_values = [], [], [], []
    for layer in range(model.n_layers):
        after = tc.encode(layer, inputs[layer])
        after[:zeroed] = 0
        for item in applied:
            if item.layer == layer:
                after[item.positions.to(after.device), item.features.to(after.device)] = item.after.to(after)
        before = run.activations[layer].to_dense().to(device=after.device, dtype=after.dtype)
        differ = (after != before).nonzero()
        changed.append(torch.cat([torch.full((len(differ), 1), layer), differ.cpu()], dim=1))
        before_values.append(before[tuple(differ.T)].float().cpu())
        after_values.append(after[tuple(differ.T)].float().cpu())
        sparse_parts.append(after.to_sparse())
    stacked = torch.stack(sparse_parts).coalesce()
    indices, b, a = torch.cat(changed), torch.cat(before_values), torch.cat(after_values)
    order = torch.argsort((a - b).abs(), descending=True, stable=True)
    return stacked, FeatureChanges(indices[order].long(), b[order], a[order])
