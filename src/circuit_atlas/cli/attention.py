"""`circuit-atlas attention`: which heads carry an edge, and why a head attends where it does."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from circuit_atlas.cli.common import (
    DTYPES,
    add_device_map_arguments,
    add_lazy_encoder_argument,
    check_at_least,
    model_placement,
)
from circuit_atlas.cli.export import find_graph, stored_attention
from circuit_atlas.errors import CircuitAtlasError

EXAMPLE = """\
what it shows:
  An edge between two positions of an attribution graph runs through frozen attention. This
  command splits the edge over the (layer, head) pairs that carry it, exactly: each path is
  assigned to its last hop that changes position (--hop first: its first), and same-position
  edges show the residual path (no attention) plus attention-to-self. With --head it explains
  why that head attends there: its score from the query position to the key position is split
  into (query-side term x key-side term) pairs of the residual stream (token embeddings,
  transcoder features, errors, earlier heads, biases), with norms frozen at their clean values.
  'value' is the pair's share of the score; 'dweight' how much the key's attention weight would
  drop without that pair.

examples:
  circuit-atlas trace --model demo --transcoders demo --prompt "the capital of the region \\
      containing dallas is" --out graphs --slug dallas
  circuit-atlas attention graphs/dallas --precompute
      explain the strongest cross-position edges once, store them beside the graph
      (attention.json + attention.safetensors) and in its graph JSON
  circuit-atlas attention graphs/dallas
      list the stored edges and their heads
  circuit-atlas attention graphs/dallas --source E_127_7 --target 0_479_8
      the heads carrying that edge
  circuit-atlas attention graphs/dallas --source E_127_7 --target 0_479_8 \\
      --head 0.0
      why head 0 of layer 0 attends from the target's position to the source's

Node ids are the graph's: features '{layer}_{feature}_{position}', errors '{layer}_-1_{position}',
tokens 'E_{token}_{position}', logits '{L+1}_{token}_{last position}'. Stored explanations are
used when they cover the request; otherwise the graph's model and transcoders are loaded (the ones
the graph names, or --model / --transcoders).
"""


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "attention",
        help="which heads carry a graph edge, and why a head attends there (QK attribution)",
        description="Per-head edges and QK attributions of attention for a traced graph.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("graph_dir", type=Path, metavar="GRAPH_DIR",
                        help="graph bundle written by trace (OUT/<slug>/) or a Graph.save folder")
    parser.add_argument("--source", metavar="ID", help="source node id of the edge")
    parser.add_argument("--target", metavar="ID", help="target node id of the edge")
    parser.add_argument("--head", metavar="L.H", help="explain head H of layer L (e.g. 3.7)")
    parser.add_argument("--hop", choices=["last", "first"], default="last",
                        help="partition of multi-hop paths: the head of each path's last (default) "
                             "or first position-changing hop")
    parser.add_argument("--top", type=int, default=15, help="rows to print (default 15)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    group = parser.add_argument_group("precomputing (stored beside the graph)")
    group.add_argument("--precompute", action="store_true",
                       help="explain the strongest cross-position edges of the pruned graph and "
                            "store them beside it and in its graph JSON")
    group.add_argument("--edges", type=int, default=10, help="edges to explain (default 10)")
    group.add_argument("--heads-per-edge", type=int, default=3, help="heads explained per edge (default 3)")
    group.add_argument("--pairs", type=int, default=50, help="strongest pairs stored per head (default 50)")
    model = parser.add_argument_group("model (default: the one the graph was traced with)")
    model.add_argument("--model", help="hub id, local directory, or 'demo'")
    model.add_argument("--transcoders", help="hub id, local directory, or 'demo'")
    add_lazy_encoder_argument(model)
    model.add_argument("--dtype", choices=DTYPES, help="model dtype (default: float32)")
    model.add_argument("--device", help="cpu, cuda, cuda:1, mps ... (default: cuda if available)")
    add_device_map_arguments(model)
    parser.set_defaults(func=run)
    return parser


def parse_head(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*[.:]\s*(\d+)\s*", text)
    if not match:
        raise CircuitAtlasError(f"--head must be LAYER.HEAD, e.g. 3.7; got {text!r}")
    return int(match.group(1)), int(match.group(2))


def check_args(args) -> None:
    if (args.source is None) != (args.target is None):
        raise CircuitAtlasError("give both --source and --target (node ids of one edge)")
    if args.head is not None and args.source is None:
        raise CircuitAtlasError("--head explains a head of an edge: give --source and --target too")
    if args.precompute and args.source is not None:
        raise CircuitAtlasError("--precompute explains the strongest edges; leave out --source / --target")
    for flag, value in (("--top", args.top), ("--edges", args.edges),
                        ("--heads-per-edge", args.heads_per_edge), ("--pairs", args.pairs)):
        check_at_least(value, 1, flag)


class _Session:
    """The graph, its stored explanations, labels, and (loaded on first use) the model."""

    def __init__(self, args) -> None:
        from circuit_atlas.graph import Graph
        from circuit_atlas.graph.bundle import NATIVE_DIR, read_feature_labels

        self.args = args
        self.native_dir, self.slug = find_graph(args.graph_dir.expanduser())
        self.graph = Graph.load(self.native_dir)
        native = self.native_dir
        self.folder = native.parent if native.name == NATIVE_DIR else native
        self.stored = stored_attention(native)
        self.feature_labels = read_feature_labels(self.folder)
        self._model = None
        self._attributor = None
        self._explainer = None

    # --- model ---------------------------------------------------------------------------------
    @property
    def model(self):
        if self._model is None:
            from circuit_atlas.replacement import load

            model_ref, transcoders_ref = self.model_refs()
            placement = model_placement(self.args)
            try:
                self._model = load(model_ref, transcoders_ref, dtype=self.args.dtype,
                                   lazy_encoder=self.args.lazy_encoder, **placement)
            except CircuitAtlasError as exc:
                raise CircuitAtlasError(
                    f"{exc}\n(loading the model the graph names; pass --model and --transcoders to "
                    "choose them)") from None
        return self._model

    def model_refs(self) -> tuple[str, str]:
        graph, args = self.graph, self.args
        scan = graph.transcoder_scan
        if isinstance(scan, str) and scan.startswith("circuit-atlas-demo/"):
            default_model, default_tc = "demo", "demo-" + scan.split("/", 1)[1]
        else:
            default_model, default_tc = graph.model_name, scan
        model_ref = args.model or default_model
        transcoders_ref = args.transcoders or default_tc
        if not model_ref or not transcoders_ref or not isinstance(transcoders_ref, str):
            raise CircuitAtlasError("the graph does not name a model and a transcoder set that can be "
                                    "loaded; pass --model and --transcoders")
        return model_ref, transcoders_ref

    def attributor(self):
        from circuit_atlas.attribution.heads import HeadAttributor

        if self._attributor is None:
            self._attributor = HeadAttributor(self.model, self.graph, run=self.explainer().run)
        return self._attributor

    def explainer(self):
        from circuit_atlas.attribution.qk import QKExplainer

        if self._explainer is None:
            self._explainer = QKExplainer(self.model, self.graph.input_ids)
        return self._explainer

    # --- answers -------------------------------------------------------------------------------
    def edge(self, source: str, target: str) -> dict[str, Any]:
        stored = self.stored.edge(source, target) if self.stored is not None else None
        if stored is not None and stored["hop"] == self.args.hop:
            return stored
        return self.attributor().edge_heads(source, target, hop=self.args.hop).to_json()

    def explanation(self, edge: dict[str, Any], layer: int, head: int) -> dict[str, Any]:
        row = next((r for r in edge["heads"] if (r["layer"], r["head"]) == (layer, head)), None)
        query, key = ((row["query_position"], row["key_position"]) if row is not None
                      else (edge["target_position"], edge["source_position"]))
        if self.stored is not None:
            stored = self.stored.explanation(layer, head, query, key)
            if stored is not None:
                return stored.to_json(self.args.top)
        return self.explainer().explain(layer, head, query, key).to_json(self.args.top)

    def label(self, term_id: str, fallback: str = "") -> str:
        parts = term_id.split("_")
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            text = self.feature_labels.get((int(parts[0]), int(parts[1])))
            if text:
                return text
        return fallback


def run(args) -> int:
    check_args(args)
    head = parse_head(args.head)
    session = _Session(args)
    if args.precompute:
        return precompute(session)
    if args.source is None:
        return list_stored(session)
    edge = session.edge(args.source, args.target)
    if head is None:
        print(json.dumps(edge, indent=1) if args.json else format_edge(edge, args.top, session.graph))
        return 0
    explanation = session.explanation(edge, *head)
    print(json.dumps(explanation, indent=1) if args.json else format_explanation(explanation, session))
    return 0


def precompute(session: _Session) -> int:
    from circuit_atlas.attribution import explain_graph_attention
    from circuit_atlas.graph import write_graph_json
    from circuit_atlas.graph.bundle import read_bundle_info

    args = session.args
    attributor = session.attributor()  # checks the graph against the model first
    info = read_bundle_info(session.folder) or {}
    node_threshold = float(info.get("node_threshold", 0.8))
    edge_threshold = float(info.get("edge_threshold", 0.98))
    attention = explain_graph_attention(
        session.model, session.graph, node_threshold=node_threshold, edge_threshold=edge_threshold,
        max_edges=args.edges, heads_per_edge=args.heads_per_edge, top_pairs=args.pairs,
        hop=args.hop, attributor=attributor, explainer=session.explainer())
    attention.save(session.folder)
    print(f"wrote {session.folder / 'attention.json'} and attention.safetensors "
          f"({len(attention.edges)} edges, {len(attention.explanations)} head explanations)")
    if session.slug is not None:
        labels = {k: v for k, v in session.feature_labels.items()} or None
        path = write_graph_json(session.graph, session.folder, session.slug, node_threshold,
                                edge_threshold, labels, attention=attention)
        print(f"updated {path} (its \"attention\" object)")
    return 0


def list_stored(session: _Session) -> int:
    stored = session.stored
    if stored is None:
        raise CircuitAtlasError(
            f"{session.folder} holds no stored attention explanations; run `circuit-atlas attention "
            f"{session.args.graph_dir} --precompute`, or name an edge with --source and --target")
    if session.args.json:
        print(json.dumps(stored.to_json(session.args.top), indent=1))
        return 0
    for edge in stored.edges:
        print(format_edge(edge, min(session.args.top, 5), session.graph))
    return 0


# ---------------------------------------------------------------------- printing
def format_edge(edge: dict[str, Any], top: int, graph) -> str:
    def name(node_id: str) -> str:
        try:
            return f"{node_id} ({graph.node_label(graph.node_index(node_id))})"
        except KeyError:
            return node_id

    lines = [f"edge {name(edge['source'])} -> {name(edge['target'])}: {edge['edge']:+.5g}",
             f"  heads by {edge['hop']} position-changing hop; rows + residual = {edge['total']:+.5g}"]
    if edge["source_position"] == edge["target_position"]:
        lines.append(f"  {'residual (no attention)':<24} {edge['residual']:>+11.5g}")
    lines.append(f"  {'head':<10} {'query':>5} {'key':>5} {'weight':>11} {'share':>7}")
    for row in edge["heads"][:top]:
        share = row["weight"] / edge["edge"] if edge["edge"] else float("nan")
        lines.append(f"  L{row['layer']}.H{row['head']:<7} {row['query_position']:>5} "
                     f"{row['key_position']:>5} {row['weight']:>+11.5g} {share:>7.1%}")
    if len(edge["heads"]) > top:
        lines.append(f"  ... {len(edge['heads']) - top} more heads")
    return "\n".join(lines)


def format_explanation(data: dict[str, Any], session: _Session) -> str:
    labels = data.get("labels", {})

    def term(term_id: str) -> str:
        text = session.label(term_id, labels.get(term_id, ""))
        return f"{term_id} {text}"[:44]

    cap = f", after soft-cap {data['logit']:+.4g}" if data.get("softcap") else ""
    lines = [
        f"head L{data['layer']}.H{data['head']}: query {data['query_position']} "
        f"{data['query_token']!r} -> key {data['key_position']} {data['key_token']!r}",
        f"  score {data['score']:+.4g}{cap}; attention weight {data['attention_weight']:.3f}; "
        f"{data['n_query_terms']} x {data['n_key_terms']} term pairs (unexplained "
        f"{data['unexplained']:+.1e})",
        "",
        f"  {'query-side term':<44} {'key-side term':<44} {'value':>9} {'dweight':>8}",
    ]
    for pair in data["pairs"]:
        if pair["value"] == 0.0 and pair["weight_effect"] == 0.0:
            continue  # e.g. a bias pair of a model without biases
        lines.append(f"  {term(pair['query_term']):<44} {term(pair['key_term']):<44} "
                     f"{pair['value']:>+9.4g} {pair['weight_effect']:>+8.3f}")
    for side in ("query", "key"):
        lines += ["", f"  strongest {side}-side terms (summed over the other side)"]
        for item in [i for i in data[f"{side}_terms"] if i["value"] != 0.0][:8]:
            lines.append(f"  {term(item['id']):<44} {item['value']:>+9.4g}")
    return "\n".join(lines)
