"""Time of attention explanations versus prompt length, next to the attribution they explain.

On a seeded tiny Llama (`--layers`, `--d-model`, `--heads`) with sparse random CLT transcoders,
for each prompt length: tracing the graph (`attribute`), setting up a `HeadAttributor` (clean run
+ frozen pass), `edge_heads` per edge (median over the graph's strongest cross-position edges),
setting up a `QKExplainer`, `explain` per head (median), and `explain_graph_attention` with its
defaults (10 edges, 3 heads each). Figures are wall seconds; medians of `--repeats` runs.

    python benchmarks/attention.py
    python benchmarks/attention.py --lengths 32 128 --device cuda
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path


def _sparsify():
    """`sparsify` of the attribution benchmark (same transcoder sparsity)."""
    spec = importlib.util.spec_from_file_location("_attribution_bench", Path(__file__).with_name("attribution.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.sparsify


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def measure(length: int, args) -> dict:
    import torch

    import circuit_atlas
    from circuit_atlas.attribution.heads import HeadAttributor
    from circuit_atlas.attribution.qk import QKExplainer
    from circuit_atlas.graph import prune
    from circuit_atlas.graph.attention import strongest_cross_position_edges
    from circuit_atlas.models.tiny import tiny_language_model
    from circuit_atlas.transcoders.random import random_transcoders

    lm = tiny_language_model("llama", seed=0, n_layers=args.layers, d_model=args.d_model,
                             n_heads=args.heads, n_kv_heads=args.kv_heads, max_positions=max(1024, length))
    tc = random_transcoders("clt", n_layers=args.layers, d_model=args.d_model, n_features=args.features,
                            seed=1, input_hook="hook_resid_mid", output_hook="hook_mlp_out")
    model = circuit_atlas.load(lm, tc, device=args.device)
    _sparsify()(model, args.l0)
    tokens = torch.randint(4, lm.vocab_size, (length,), generator=torch.Generator().manual_seed(length))
    tokens[0] = lm.tokenizer.bos_token_id
    graph, t_attribute = timed(lambda: circuit_atlas.attribute(
        model, tokens, max_feature_nodes=args.max_feature_nodes, progress=False))
    edges = strongest_cross_position_edges(graph, prune(graph), args.edges)
    attributor, t_heads_setup = timed(lambda: HeadAttributor(model, graph))
    per_edge, rows = [], []
    for source, target, _ in edges:
        heads, seconds = timed(lambda: attributor.edge_heads(graph.node_id(source), graph.node_id(target)))
        per_edge.append(seconds)
        rows.append(heads[0])
    explainer, t_qk_setup = timed(lambda: QKExplainer(model, tokens))
    per_head, n_terms = [], []
    for row in rows[: args.edges]:
        qk, seconds = timed(lambda: explainer.explain(row.layer, row.head, row.query_position, row.key_position))
        per_head.append(seconds)
        n_terms.append(len(qk.query_terms) * len(qk.key_terms))
    _, t_graph = timed(lambda: circuit_atlas.explain_graph_attention(model, graph, progress=False))
    return {
        "length": length, "attribute_s": t_attribute, "heads_setup_s": t_heads_setup,
        "edge_heads_s": statistics.median(per_edge), "qk_setup_s": t_qk_setup,
        "qk_head_s": statistics.median(per_head), "pairs": int(statistics.median(n_terms)),
        "graph_attention_s": t_graph,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--features", type=int, default=2048)
    parser.add_argument("--l0", type=int, default=16, help="active features per layer and position")
    parser.add_argument("--max-feature-nodes", type=int, default=1024)
    parser.add_argument("--edges", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    columns = ["length", "attribute_s", "heads_setup_s", "edge_heads_s", "qk_setup_s", "qk_head_s",
               "pairs", "graph_attention_s"]
    print(" ".join(f"{c:>17}" for c in columns))
    for length in args.lengths:
        runs = [measure(length, args) for _ in range(args.repeats)]
        row = {c: statistics.median(r[c] for r in runs) for c in columns}
        print(" ".join(f"{row[c]:>17.3f}" if isinstance(row[c], float) else f"{row[c]:>17}" for c in columns))


if __name__ == "__main__":
    main()
