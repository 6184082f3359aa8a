"""QK attribution: why an attention head attends from one position to another.

A head's pre-softmax score for query position q and key position k is
`scaling · ⟨query(x_q), key(x_k)⟩`, where `x_q`, `x_k` are the residual stream entering the layer.
With every norm denominator frozen at its clean value (the layer's input norm, and the q/k norms of
Qwen3 / Gemma-3), `query(x) = M_q x + c_q` is affine (rotary embeddings are linear maps fixed by
the position; grouped-query attention only shares `M_k` between heads), and likewise the key. The
residual stream is itself an exact sum of terms:

    x_p = token embedding (+ learned position embedding, GPT-2)
          + Σ_{l < layer} [ Σ_h head h's output at p            (through Gemma's post-attention norm)
                            + attention output bias
                            + Σ_features activation · decoder     (CLT: every layer it writes to)
                            + transcoder b_dec + skip + error     (or the MLP output at zeroed positions)]

so the score is an exact sum over (query term, key term) pairs, plus the bias pairs that hold
`c_q` and `c_k`. Gemma-2's attention soft-cap acts on the score afterwards: `score` is the
pre-cap value the pairs sum to, `logit` the capped value the softmax sees.

Projections go through the model's own modules (`models.attention_probe`), so RoPE variants, q/k
norms, biases and GQA are exactly the model's. The softmax-level view asks, for each pair, how
much the key's attention weight would drop if that pair's value were removed from the key's score
with every other key's score unchanged.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

import torch
from torch import nn

from circuit_atlas.errors import AttentionError
from circuit_atlas.models.adapters import HOOK_MLP_OUT_RAW
from circuit_atlas.models.attention import AttentionCall, observe_attention
from circuit_atlas.models.attention_probe import project_queries_keys
from circuit_atlas.models.norms import apply_norm
from circuit_atlas.models.placement import execution_device, loaded_weights

TERM_KINDS = ("token", "position", "feature", "error", "skip", "transcoder_bias", "mlp", "head",
              "attention_bias", "query_bias", "key_bias")
NODE_KINDS = ("token", "feature", "error")  # terms that are nodes of attribution graphs
PAIR_ORDERS = ("abs", "value", "weight")


@dataclass(frozen=True)
class Term:
    """One part of the residual stream at a position (or a bias of the query / key).

    `id` is the graph's node id for graph nodes (features `{layer}_{feature}_{pos}`, errors
    `{layer}_-1_{pos}`, tokens `E_{token}_{pos}`) and otherwise one of `pos_{pos}` (learned
    position embedding), `attn_{layer}.{head}_{pos}` (one head's output), `attnbias_{layer}_{pos}`,
    `skip_{layer}_{pos}` (transcoder skip connection), `bdec_{layer}_{pos}` (transcoder bias),
    `mlp_{layer}_{pos}` (the real MLP output at positions without features), `bias_q`, `bias_k`.
    `layer` is the layer that wrote the term (the source layer of a feature).
    """

    id: str
    kind: str
    label: str
    position: int | None = None
    layer: int | None = None
    index: int | None = None  # feature index or head index

    @property
    def is_node(self) -> bool:
        return self.kind in NODE_KINDS

    @property
    def node_id(self) -> str | None:
        """The id of this term in an attribution graph of the prompt, None for non-nodes."""
        return self.id if self.is_node else None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "label": self.label, "position": self.position,
                "layer": self.layer, "index": self.index, "node": self.is_node}


class Pair(NamedTuple):
    """One (query term, key term) pair: its share of the score and of the key's weight."""

    query_term: str
    key_term: str
    value: float
    weight_effect: float


@dataclass
class PairTable:
    """Every (query term, key term) pair as columns; `value` sums to the score."""

    query_term: list[str]
    key_term: list[str]
    value: torch.Tensor

    def __len__(self) -> int:
        return len(self.query_term)

    def __iter__(self):
        """Rows `(query_term, key_term, value)`."""
        return zip(self.query_term, self.key_term, self.value.tolist())

    def to_records(self) -> list[dict[str, Any]]:
        return [{"query_term": q, "key_term": k, "value": float(v)} for q, k, v in
                zip(self.query_term, self.key_term, self.value.tolist())]


@dataclass
class QKAttribution:
    """The score of one (layer, head, query position, key position), split into term pairs.

    `values[i, j]` is the part of `score` due to query term `query_terms[i]` and key term
    `key_terms[j]`; the last query term is `bias_q` and the last key term `bias_k`. `score` is what
    the model computed in its clean pass (pre soft-cap); `unexplained` = score − Σ values is float
    rounding. `logit` is the softmax input (after Gemma-2's soft-cap), `attention_weight` the
    key's weight; `weight_effects[i, j]` = weight − weight with that pair's value taken out of the
    key's score (every other key unchanged): positive pairs pull the head towards this key.
    """

    layer: int
    head: int
    query_position: int
    key_position: int
    query_token: str
    key_token: str
    score: float
    logit: float
    softcap: float | None
    scaling: float
    attention_weight: float
    query_terms: list[Term]
    key_terms: list[Term]
    values: torch.Tensor
    weight_effects: torch.Tensor = field(repr=False)

    @property
    def unexplained(self) -> float:
        return self.score - float(self.values.double().sum())

    @property
    def terms(self) -> PairTable:
        """All pairs, query-major: columns `query_term`, `key_term`, `value`."""
        n_q, n_k = self.values.shape
        query_ids = [t.id for t in self.query_terms]
        key_ids = [t.id for t in self.key_terms]
        return PairTable([query_ids[i] for i in range(n_q) for _ in range(n_k)],
                         key_ids * n_q, self.values.reshape(-1).clone())

    def top_pairs(self, n: int = 10, *, by: str = "abs") -> list[Pair]:
        """The `n` strongest pairs: by |value| ("abs"), by value, largest first ("value"), or by
        how much they raise the key's attention weight ("weight")."""
        if by not in PAIR_ORDERS:
            raise AttentionError(f"by must be one of {PAIR_ORDERS}, got {by!r}")
        key = {"abs": self.values.abs(), "value": self.values, "weight": self.weight_effects}[by]
        flat = torch.argsort(key.reshape(-1), descending=True, stable=True)[: max(int(n), 0)]
        n_k = self.values.shape[1]
        pairs = []
        for index in flat.tolist():
            i, j = divmod(index, n_k)
            pairs.append(Pair(self.query_terms[i].id, self.key_terms[j].id,
                              float(self.values[i, j]), float(self.weight_effects[i, j])))
        return pairs

    def query_totals(self) -> list[tuple[Term, float]]:
        """Each query term's share of the score (summed over key terms), strongest first."""
        return _ranked(self.query_terms, self.values.sum(1))

    def key_totals(self) -> list[tuple[Term, float]]:
        """Each key term's share of the score (summed over query terms), strongest first."""
        return _ranked(self.key_terms, self.values.sum(0))

    def term(self, term_id: str) -> Term:
        for term in self.query_terms + self.key_terms:
            if term.id == term_id:
                return term
        raise AttentionError(f"no term {term_id!r} in this explanation")

    def to_json(self, top: int = 20) -> dict[str, Any]:
        """Plain JSON types: the score, the strongest pairs and each side's strongest terms."""
        labels = {t.id: t for t in self.query_terms + self.key_terms}
        pairs = self.top_pairs(top)
        return {
            "layer": self.layer, "head": self.head,
            "query_position": self.query_position, "key_position": self.key_position,
            "query_token": self.query_token, "key_token": self.key_token,
            "score": self.score, "logit": self.logit, "softcap": self.softcap,
            "scaling": self.scaling, "attention_weight": self.attention_weight,
            "unexplained": self.unexplained,
            "n_query_terms": len(self.query_terms), "n_key_terms": len(self.key_terms),
            "pairs": [p._asdict() for p in pairs],
            "query_terms": [{**t.to_json(), "value": v} for t, v in self.query_totals()[:top]],
            "key_terms": [{**t.to_json(), "value": v} for t, v in self.key_totals()[:top]],
            "labels": {i: labels[i].label for p in pairs for i in (p.query_term, p.key_term)},
        }

    def __str__(self) -> str:
        cap = f", logit after soft-cap {self.logit:+.4g}" if self.softcap else ""
        lines = [
            f"L{self.layer}.H{self.head}: query {self.query_position} {self.query_token!r} -> key "
            f"{self.key_position} {self.key_token!r}: score {self.score:+.4g}{cap}, attention "
            f"weight {self.attention_weight:.3f}",
            f"  {'query term':<28} {'key term':<28} {'value':>10} {'Δweight':>9}",
        ]
        for pair in self.top_pairs(15):
            lines.append(f"  {pair.query_term:<28} {pair.key_term:<28} {pair.value:>+10.4g} "
                         f"{pair.weight_effect:>+9.3f}")
        lines.append(f"  ({len(self.query_terms)} x {len(self.key_terms)} pairs; unexplained "
                     f"{self.unexplained:+.2g})")
        return "\n".join(lines)


def _ranked(terms: Sequence[Term], totals: torch.Tensor) -> list[tuple[Term, float]]:
    order = torch.argsort(totals.abs(), descending=True, stable=True)
    return [(terms[i], float(totals[i])) for i in order.tolist()]


# ---------------------------------------------------------------------- the explainer
class QKExplainer:
    """QK attributions for one prompt: one clean run, then any (layer, head, query, key)."""

    def __init__(self, model, prompt_or_tokens, *, run=None) -> None:
        self.model = model
        self.lm = model.lm
        self.tokens = model.tokenize(prompt_or_tokens) if run is None else run.tokens
        self._calls: dict[int, AttentionCall] = {}

        def keep(call: AttentionCall) -> None:
            self._calls[call.layer] = AttentionCall(
                call.layer, call.query.detach(), call.key.detach(), call.value.detach(),
                call.pattern.detach(), call.output.detach(), call.mask, call.scaling, call.softcap)

        with torch.no_grad(), observe_attention(keep):
            self.run = model.run(self.tokens)
        self.token_strings = self.lm.token_strings(self.tokens)

    # --- checks ----------------------------------------------------------------------------
    @property
    def n_heads(self) -> int:
        return int(self._calls[0].query.shape[1])

    def check(self, layer: int, head: int, query_position: int, key_position: int) -> tuple[int, ...]:
        """The four indices as ints, after checking ranges, causality and sliding windows."""
        n_layers, n_positions = self.model.n_layers, int(self.tokens.shape[0])
        checked = []
        for name, value, size in (("layer", layer, n_layers), ("head", head, self.n_heads),
                                  ("query_position", query_position, n_positions),
                                  ("key_position", key_position, n_positions)):
            try:
                index = operator.index(value) if not isinstance(value, bool) else None
            except TypeError:
                index = None
            if index is None:
                raise AttentionError(f"{name} must be an integer, got {value!r}")
            if not 0 <= index < size:
                raise AttentionError(f"{name} {index} is out of range 0..{size - 1}")
            checked.append(index)
        layer, head, query_position, key_position = checked
        if key_position > query_position:
            raise AttentionError(
                f"key_position {key_position} is after query_position {query_position}: attention "
                f"is causal, a query attends to keys 0..{query_position}")
        visible = self._visible(layer, query_position)
        if not bool(visible[key_position]):
            seen = visible.nonzero().flatten().tolist()
            raise AttentionError(
                f"layer {layer} cannot attend from position {query_position} to key_position "
                f"{key_position}: it lies outside the layer's sliding window (keys "
                f"{seen[0]}..{seen[-1]} are visible)")
        return layer, head, query_position, key_position

    def _visible(self, layer: int, query_position: int) -> torch.Tensor:
        mask = self._calls[layer].mask
        n = int(self.tokens.shape[0])
        if mask is None:
            return torch.arange(n) <= query_position
        row = mask[0, 0, query_position, :n].cpu()
        if row.dtype == torch.bool:
            return row
        return row > torch.finfo(row.dtype).min / 2

    # --- explanation -------------------------------------------------------------------------
    def explain(self, layer: int, head: int, query_position: int, key_position: int) -> QKAttribution:
        """The QK attribution of head `head` of `layer` from `query_position` to `key_position`."""
        layer, head, query_position, key_position = self.check(layer, head, query_position, key_position)
        query_terms, query_vectors = residual_terms(self.model, self.run, self._calls, layer, query_position)
        key_terms, key_vectors = residual_terms(self.model, self.run, self._calls, layer, key_position)
        projection = project_queries_keys(
            self.lm, self.run.record, layer, query_position=query_position, key_position=key_position,
            query_vectors=query_vectors, key_vectors=key_vectors)
        queries = torch.cat([projection.query[:, head], projection.query_constant[head][None]]).double()
        keys = torch.cat([projection.key[:, head], projection.key_constant[head][None]]).double()
        values = projection.scaling * queries @ keys.T
        query_terms = query_terms + [Term("bias_q", "query_bias", "constant part of the query (biases)")]
        key_terms = key_terms + [Term("bias_k", "key_bias", "constant part of the key (biases)")]
        call = self._calls[layer]
        q, k = call.query[0, head].double(), call.key[0, head].double()
        row_scores = call.scaling * (k @ q[query_position])  # every key's score for this query
        score = float(row_scores[key_position])
        logits = _capped(row_scores, call.softcap)
        visible = self._visible(layer, query_position).to(logits.device)
        weights = torch.softmax(logits.masked_fill(~visible, float("-inf")), -1)
        others = logits.masked_fill(~visible, float("-inf"))
        others[key_position] = float("-inf")
        effects = _weight_effects(values, score, torch.logsumexp(others, -1), call.softcap,
                                  float(weights[key_position]))
        return QKAttribution(
            layer=layer, head=head, query_position=query_position, key_position=key_position,
            query_token=self.token_strings[query_position], key_token=self.token_strings[key_position],
            score=score, logit=float(logits[key_position]), softcap=call.softcap,
            scaling=call.scaling, attention_weight=float(weights[key_position]),
            query_terms=query_terms, key_terms=key_terms, values=values.float().cpu(),
            weight_effects=effects.float().cpu(),
        )


def _capped(scores: torch.Tensor, softcap: float | None) -> torch.Tensor:
    return scores if not softcap else softcap * torch.tanh(scores / softcap)


def _weight_effects(values: torch.Tensor, score: float, log_others: torch.Tensor,
                    softcap: float | None, weight: float) -> torch.Tensor:
    """weight − weight if each pair's value were removed from the key's (pre-cap) score."""
    without = _capped(score - values, softcap)
    return weight - torch.sigmoid(without - log_others)


def qk_attribution(model, prompt_or_tokens, *, layer: int, head: int, query_position: int,
                   key_position: int) -> QKAttribution:
    """Split head `head` of `layer`'s score from `query_position` to `key_position` into pairs of
    residual-stream terms (see `QKAttribution`); positions count from 0, the BOS included."""
    return QKExplainer(model, prompt_or_tokens).explain(layer, head, query_position, key_position)


# ---------------------------------------------------------------------- residual terms
def residual_terms(model, run, calls: dict[int, AttentionCall], layer: int,
                   position: int) -> tuple[list[Term], torch.Tensor]:
    """The terms of the residual stream entering `layer` at `position` and their vectors [n, d]
    (float32); they sum to that residual up to rounding."""
    builder = _TermBuilder(model, run, position)
    builder.embedding()
    for source in range(layer):
        builder.attention(source, calls[source])
        builder.mlp(source)
    builder.features(layer)
    return builder.terms, torch.stack(builder.vectors) if builder.vectors else torch.zeros(0, model.d_model)


class _TermBuilder:
    """Collects (term, vector) pairs for one position."""

    def __init__(self, model, run, position: int) -> None:
        self.model, self.run, self.position = model, run, position
        self.lm, self.tc = model.lm, model.transcoders
        self.adapter = self.lm.adapter
        self.terms: list[Term] = []
        self.vectors: list[torch.Tensor] = []

    def add(self, term: Term, vector: torch.Tensor) -> None:
        self.terms.append(term)
        self.vectors.append(vector.detach().float().reshape(-1))

    def embedding(self) -> None:
        p = self.position
        token = int(self.run.tokens[p])
        text = self.lm.token_strings([token])[0]
        self.add(Term(f"E_{token}_{p}", "token", f"token {text!r} @{p}", p), self.run.token_vectors[p])
        if self.adapter.position_embedding is not None:
            embedding = self.lm.module(self.adapter.position_embedding)
            with loaded_weights(embedding):  # a device_map may have offloaded it
                row = embedding.weight[p].to(self.lm.device, copy=True)
            self.add(Term(f"pos_{p}", "position", f"position embedding @{p}", p), row)

    # --- attention ---------------------------------------------------------------------------
    def attention(self, layer: int, call: AttentionCall) -> None:
        p = self.position
        heads = call.output[0, :, p]  # [H, hd]
        n_heads, head_dim = heads.shape
        out_proj = self.lm.layer_module(layer, self.adapter.layer_attention_output)
        blocks = torch.zeros(n_heads, n_heads * head_dim, dtype=heads.dtype, device=heads.device)
        for h in range(n_heads):
            blocks[h, h * head_dim : (h + 1) * head_dim] = heads[h]
        with loaded_weights(out_proj):  # a device_map may have offloaded it
            where = execution_device(out_proj)
            per_head = _linear_part(out_proj, blocks.to(where)).to(self.lm.device)
            bias = getattr(out_proj, "bias", None)
            bias = None if bias is None else bias.to(self.lm.device, copy=True)
        post = self.adapter.layer_post_attention_norm
        if post is not None:
            per_head = self._norm(layer, post, per_head)
            bias = None if bias is None else self._norm(layer, post, bias[None])[0]
        for h in range(n_heads):
            self.add(Term(f"attn_{layer}.{h}_{p}", "head", f"head L{layer}.H{h} output @{p}", p,
                          layer, h), per_head[h])
        if bias is not None:
            self.add(Term(f"attnbias_{layer}_{p}", "attention_bias",
                          f"attention output bias L{layer} @{p}", p, layer), bias)

    # --- MLP / transcoders -----------------------------------------------------------------------
    def _mlp_to_residual(self, layer: int, vectors: torch.Tensor) -> torch.Tensor:
        """What vectors at the transcoders' output hook add to the residual stream."""
        post = self.adapter.layer_post_mlp_norm
        if post is not None and self.model.output_hook == HOOK_MLP_OUT_RAW:
            return self._norm(layer, post, vectors)
        return vectors

    def mlp(self, layer: int) -> None:
        p, run = self.position, self.run
        if p < run.n_zeroed_positions:
            self.add(Term(f"mlp_{layer}_{p}", "mlp", f"MLP output L{layer} @{p} (no features here)",
                          p, layer), self._mlp_to_residual(layer, run.mlp_outputs[layer, p][None])[0])
            return
        parts = [(Term(f"{layer}_-1_{p}", "error", f"error L{layer} @{p}", p, layer),
                  run.errors[layer, p])]
        skip = self.tc.skip(layer, run.mlp_inputs[layer, p][None])
        if skip is not None:
            parts.append((Term(f"skip_{layer}_{p}", "skip", f"transcoder skip L{layer} @{p}", p,
                               layer), skip[0]))
        parts.append((Term(f"bdec_{layer}_{p}", "transcoder_bias", f"transcoder bias L{layer}",
                           p, layer), self.tc.decoder_bias(layer)))
        mapped = self._mlp_to_residual(layer, torch.stack([v.to(self.lm.device, self.lm.dtype)
                                                           for _, v in parts]))
        for (term, _), vector in zip(parts, mapped):
            self.add(term, vector)

    def features(self, layer: int) -> None:
        """Active features at this position whose decoders write below `layer`, one term each."""
        p, run = self.position, self.run
        if p < run.n_zeroed_positions:
            return
        indices = run.activations.indices()
        values = run.activations.values()
        here = (indices[1] == p) & (indices[0] < layer)
        for source in torch.unique(indices[0][here]).tolist():
            chosen = here & (indices[0] == source)
            features, activations = indices[2][chosen], values[chosen]
            total = torch.zeros(features.numel(), self.lm.d_model, device=self.lm.device)
            for target in self.tc.target_layers(source):
                if target >= layer:
                    break
                rows = self.tc.decoder_rows(source, features, target).to(self.lm.device)
                rows = activations.to(rows.device, rows.dtype)[:, None] * rows
                total += self._mlp_to_residual(target, rows.to(self.lm.dtype)).float()
            for feature, vector in zip(features.tolist(), total):
                self.add(Term(f"{source}_{feature}_{p}", "feature", f"feature L{source} #{feature} @{p}",
                              p, source, feature), vector)

    # --- helpers -----------------------------------------------------------------------------
    def _norm(self, layer: int, part: str, vectors: torch.Tensor) -> torch.Tensor:
        """A norm of `layer` as the linear map it is with its denominator frozen at `position`."""
        module = self.lm.layer_module(layer, part)
        path = f"{self.adapter.layers}.{layer}.{part}"
        kind = self.lm._norms[path][1]
        inverse = self.run.record.norm_scales[path][0, self.position]
        with loaded_weights(module):  # a device_map may have offloaded it
            where = execution_device(module)
            out = apply_norm(kind, module, vectors.to(where, self.lm.dtype), inverse.to(where)).output
        return out.to(self.lm.device)


def _linear_part(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`module(x)` without its bias, for an output projection (nn.Linear or GPT-2's Conv1D)."""
    if isinstance(module, nn.Linear):
        return nn.functional.linear(x, module.weight)
    weight = getattr(module, "weight", None)
    if weight is not None and weight.dim() == 2 and weight.shape[0] == x.shape[-1]:
        return x @ weight  # Conv1D: y = x W + b with W [in, out]
    zero = module(torch.zeros_like(x[:1]))
    return module(x) - zero


__all__ = ["PairTable", "Pair", "QKAttribution", "QKExplainer", "Term", "qk_attribution",
           "residual_terms", "TERM_KINDS"]
