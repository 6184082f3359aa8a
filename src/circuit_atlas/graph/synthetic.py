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

import bisect
import random

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


# ---------------------------------------------------------------------- graph JSON, any size
_WORDS = (
    " the", " of", " and", " capital", " state", " containing", " Dallas", " is", " Austin", ".",
    "\n", " internationalization", " a", " in", " 1984", " Massachusetts", " to", " river", ",",
    " counterrevolutionaries", " which", " was", " north", " city", " largest", " its", " by",
)


def synthetic_graph_json(
    n_tokens: int,
    n_features: int,
    n_links: int,
    *,
    n_layers: int = 16,
    n_logits: int = 10,
    active_share: float = 0.35,
    seed: int = 0,
    slug: str | None = None,
) -> dict:
    """A graph-JSON document (`docs/graph-json.md`) shaped like a pruned graph of a long prompt,
    for the explorer's layout tests and benchmarks, in well under a second at 50 000 links.

    Features crowd the last positions and a few key positions earlier on; only about
    `active_share` of the other positions have any, so long prompts have runs of positions
    without nodes. Every position has its embedding node, one error node per busy (layer,
    position), `n_logits` logits at the last position (most probable first). Links respect
    causality (sources in lower layers and at earlier or equal positions; logits read anything),
    favour nearby positions, and are distinct.
    """
    if n_tokens < 2 or n_features < 1 or n_links < 1:
        raise ShapeMismatchError("synthetic_graph_json needs n_tokens ≥ 2, n_features ≥ 1, n_links ≥ 1")
    rng = random.Random(seed)
    last = n_tokens - 1
    tokens = ["<bos>"] + [_WORDS[(i * 7 + seed) % len(_WORDS)] for i in range(1, n_tokens)]
    busy = {p for p in range(1, last) if rng.random() < active_share}
    weights = []
    for p in range(n_tokens):
        w = 0.0 if p == 0 else 1.0 if p in busy else 0.0
        w += 60.0 * 2.0 ** (-(last - p) / 3.0)
        weights.append(w)
    positions = rng.choices(range(n_tokens), weights=weights, k=n_features)
    nodes: list[dict] = []
    seen: set[tuple[int, int, int]] = set()

    def node(node_id: str, js_id: str, feature: int, layer: str, pos: int, ftype: str,
             **extra) -> dict:
        return {"node_id": node_id, "feature": feature, "layer": layer, "ctx_idx": pos,
                "feature_type": ftype, "token_prob": 0.0, "is_target_logit": False, "run_idx": 0,
                "reverse_ctx_idx": 0, "jsNodeId": js_id, "clerp": "", "influence": None,
                "activation": None, **extra}

    features: list[tuple[int, int, str]] = []  # (layer, pos, id)
    for pos in positions:
        while True:
            layer, index = rng.randrange(n_layers), rng.randrange(16384)
            if pos > 0 and (layer, index, pos) not in seen:
                break
            pos = pos or last
        seen.add((layer, index, pos))
        total = layer + index
        node_id = f"{layer}_{index}_{pos}"
        nodes.append(node(node_id, f"{layer}_{index}-0", total * (total + 1) // 2 + index, str(layer), pos,
                          "cross layer transcoder", influence=rng.random() * 0.8,
                          activation=round(rng.uniform(0.1, 12.0), 3)))
        features.append((layer, pos, node_id))
    errors = sorted({(layer, pos) for layer, pos, _ in features})
    error_nodes = [(layer, pos, f"{layer}_-1_{pos}") for layer, pos in errors[: max(1, len(errors) // 3)]]
    for layer, pos, node_id in error_nodes:
        nodes.append(node(node_id, f"{layer}_-1-{pos}", -1, str(layer), pos, "mlp reconstruction error",
                          influence=rng.random() * 0.8))
    embeddings = []
    for pos in range(n_tokens):
        token_id = 1000 + pos % 5000
        node_id = f"E_{token_id}_{pos}"
        nodes.append(node(node_id, f"E_{token_id}-{pos}", pos, "E", pos, "embedding",
                          influence=rng.random() * 0.8))
        embeddings.append((-1, pos, node_id))
    probs = sorted((rng.random() ** 3 for _ in range(n_logits)), reverse=True)
    scale = 0.9 / sum(probs)
    logits = []
    for i, p in enumerate(probs):
        token_id = 500 + i
        node_id = f"{n_layers + 1}_{token_id}_{last}"
        word = _WORDS[(i * 5 + 3) % len(_WORDS)]
        nodes.append(node(node_id, f"L_{token_id}-{last}", token_id, str(n_layers + 1), last, "logit",
                          token_prob=p * scale, is_target_logit=i == 0,
                          clerp=f'Output "{word}" (p={p * scale:.3f})'))
        logits.append((n_layers, last, node_id))
    sources = features + error_nodes + embeddings
    by_pos: dict[int, list[tuple[int, int, str]]] = {}
    for source in sources:
        by_pos.setdefault(source[1], []).append(source)
    for members in by_pos.values():
        members.sort()
    layers_at = {pos: [s[0] for s in members] for pos, members in by_pos.items()}
    source_positions = sorted(by_pos)
    targets = features + logits
    links: dict[tuple[str, str], float] = {}
    attempts = 0
    while len(links) < n_links and attempts < 20 * n_links:
        attempts += 1
        t_layer, t_pos, t_id = targets[min(int(rng.random() ** 0.7 * len(targets)), len(targets) - 1)]
        reach = int(abs(rng.gauss(0, 6))) if rng.random() < 0.8 else rng.randrange(t_pos + 1)
        want = max(0, t_pos - reach)
        # the nearest position at or before `want` that has sources, and its lower-layer ones
        pos = source_positions[max(0, bisect.bisect_right(source_positions, want) - 1)]
        below = bisect.bisect_left(layers_at[pos], t_layer)
        if not below:
            continue
        _, _, s_id = by_pos[pos][rng.randrange(below)]
        if (s_id, t_id) not in links:
            links[(s_id, t_id)] = round(rng.gauss(0, 1) * (1.5 if rng.random() < 0.7 else -1.0), 4)
    return {
        "metadata": {
            "slug": slug or f"synthetic-{n_tokens}t-{n_features}f", "scan": "synthetic/transcoders",
            "transcoder_list": [], "prompt_tokens": tokens, "prompt": "".join(tokens),
            "node_threshold": 1.0, "schema_version": 1, "generation_settings": {"seed": seed},
            "pruning_settings": {"node_threshold": 1.0, "edge_threshold": 1.0},
            "info": {"generator": {"name": "circuit-atlas synthetic"}, "model": "synthetic"},
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "",
                    "sg_pos": ""},
        "nodes": nodes,
        "links": [{"source": s, "target": t, "weight": w} for (s, t), w in links.items()],
    }
