"""Random but valid attribution graphs, for tests and for developing the viewer without a model.

The graphs respect the structure a real attribution produces (`docs/algorithm.md` §4):

- no feature or error at position 0 (the zeroed BOS position), but a token node there;
- feature → feature and error → feature edges only from a strictly lower layer and a position
  ≤ the target's (causal attention);
- token → feature edges only from positions ≤ the target's;
- logit rows may read from any feature, error or token;
- logits are ordered by descending probability, probabilities sum to < 1.
"""

from __future__ import annotations

import torch

from circuit_atlas.errors import ShapeMismatchError
from circuit_atlas.graph.graph import Graph


def random_graph(
    n_layers: int = 3,
    n_pos: int = 5,
    n_sel: int = 20,
    n_logits: int = 3,
    seed: int = 0,
    *,
    n_unselected: int | None = None,
    n_features: int | None = None,
    vocab_size: int = 1000,
    density: float = 0.6,
    n_custom_targets: int = 0,
    transcoder_kind: str = "clt",
) -> Graph:
    """Build a random valid `Graph`.

    Args:
        n_layers, n_pos: model layers L and prompt positions P (P ≥ 2: position 0 is BOS).
        n_sel: feature nodes (rows/columns of the adjacency).
        n_logits: logit targets, the last `n_custom_targets` of them custom directions with
            virtual ids `vocab_size + i`.
        seed: everything is drawn from `torch.Generator().manual_seed(seed)`.
        n_unselected: extra active features that are not nodes (default n_sel // 4).
        n_features: features per layer (default: enough to place all active features).
        density: probability that an allowed edge is non-zero.
    """
    if n_pos < 2 or n_layers < 1 or n_sel < 0 or n_logits < 1:
        raise ShapeMismatchError(
            "random_graph needs n_pos ≥ 2, n_layers ≥ 1, n_sel ≥ 0 and n_logits ≥ 1, got "
            f"n_pos={n_pos}, n_layers={n_layers}, n_sel={n_sel}, n_logits={n_logits}"
        )
    if not 0 <= n_custom_targets <= n_logits:
        raise ShapeMismatchError("random_graph: n_custom_targets must lie in [0, n_logits]")
    gen = torch.Generator().manual_seed(seed)
    n_unselected = n_sel // 4 if n_unselected is None else n_unselected
    n_act = n_sel + n_unselected
    slots = n_layers * (n_pos - 1)
    n_features = n_features or max(8, -(-2 * n_act // slots))
    if n_act > slots * n_features:
        raise ShapeMismatchError(
            f"random_graph: {n_act} active features do not fit in {slots} (layer, position) "
            f"slots of {n_features} features"
        )

    active = _random_active_features(n_act, n_layers, n_pos, n_features, gen)
    selected = torch.sort(torch.randperm(n_act, generator=gen)[:n_sel]).values
    input_ids = torch.randint(1, vocab_size, (n_pos,), generator=gen)
    input_ids[0] = 0
    tokens = ["<bos>"] + [f" t{int(i)}" for i in input_ids[1:]]
    logit_ids, logit_tokens, probs = _random_targets(n_logits, n_custom_targets, vocab_size, gen)
    adjacency = _random_adjacency(active[selected], n_layers, n_pos, n_logits, density, gen)
    error_norms = torch.rand(n_layers, n_pos, generator=gen)
    error_norms[:, 0] = 0.0
    return Graph(
        input_ids=input_ids,
        tokens=tokens,
        prompt="".join(tokens),
        active_features=active,
        activation_values=torch.rand(n_act, generator=gen) * 5 + 0.1,
        selected_features=selected,
        logit_token_ids=logit_ids,
        logit_tokens=logit_tokens,
        logit_probabilities=probs,
        adjacency=adjacency,
        n_layers=n_layers,
        vocab_size=vocab_size,
        model_name="synthetic",
        transcoder_scan="synthetic/transcoders",
        transcoder_kind=transcoder_kind,
        settings={"synthetic_seed": seed, "density": density, "max_feature_nodes": n_sel},
        error_norms=error_norms,
    )


def _random_active_features(
    n_act: int, n_layers: int, n_pos: int, n_features: int, gen: torch.Generator
) -> torch.Tensor:
    """Distinct (layer, pos ≥ 1, feature) triples in lexicographic order."""
    slots = n_layers * (n_pos - 1) * n_features
    flat = torch.sort(torch.randperm(slots, generator=gen)[:n_act]).values
    layer, rest = flat // ((n_pos - 1) * n_features), flat % ((n_pos - 1) * n_features)
    pos, feat = rest // n_features + 1, rest % n_features
    return torch.stack([layer, pos, feat], dim=1)


def _random_targets(
    n_logits: int, n_custom: int, vocab_size: int, gen: torch.Generator
) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    n_real = n_logits - n_custom
    real = torch.randperm(vocab_size, generator=gen)[:n_real]
    virtual = torch.arange(n_custom) + vocab_size + n_real
    ids = torch.cat([real, virtual])
    tokens = [f" out{int(i)}" for i in real] + [f"custom-{i}" for i in range(n_custom)]
    raw = torch.rand(n_logits, generator=gen) + 0.05
    probs = torch.sort(raw / raw.sum() * 0.9, descending=True).values
    return ids, tokens, probs


def _random_adjacency(
    coords: torch.Tensor,
    n_layers: int,
    n_pos: int,
    n_logits: int,
    density: float,
    gen: torch.Generator,
) -> torch.Tensor:
    """Rows: features then logits; columns: features, errors (layer-major), tokens."""
    n_sel = coords.shape[0]
    err_layer = torch.arange(n_layers).repeat_interleave(n_pos)
    err_pos = torch.arange(n_pos).repeat(n_layers)
    tok_pos = torch.arange(n_pos)
    t_layer, t_pos = coords[:, 0:1], coords[:, 1:2]
    feat_ok = (coords[None, :, 0] < t_layer) & (coords[None, :, 1] <= t_pos)
    err_ok = (err_layer[None] < t_layer) & (err_pos[None] <= t_pos) & (err_pos[None] > 0)
    tok_ok = tok_pos[None] <= t_pos
    feature_rows = torch.cat([feat_ok, err_ok, tok_ok], dim=1)
    n_cols = feature_rows.shape[1]
    logit_rows = torch.ones(n_logits, n_cols, dtype=torch.bool)
    logit_rows[:, n_sel : n_sel + n_layers * n_pos] = err_pos[None] > 0
    allowed = torch.cat([feature_rows, logit_rows], dim=0)
    keep = torch.rand(allowed.shape, generator=gen) < density
    values = torch.randn(allowed.shape, generator=gen)
    return torch.where(allowed & keep, values, torch.zeros(())).to(torch.float32)
