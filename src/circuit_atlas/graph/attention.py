"""Precomputed attention explanations of a pruned graph, their files, and their JSON form.

`attribution.graph_attention.explain_graph_attention(model, graph)` computes them (it needs the
model, so it sits a layer above); this module holds what is stored beside the graph and, in short,
inside the graph JSON:

- `attention.json`: format, version, model, prompt tokens, settings, the edges with their head
  rows, and for each explanation its scalars and its query-side and key-side terms;
- `attention.safetensors`: per explanation `i`, `e{i}.query_totals [n_q]`, `e{i}.key_totals [n_k]`
  (each term's share of the score), `e{i}.pair_index [K, 2]` (query term, key term) with
  `e{i}.pair_value [K]` and `e{i}.pair_weight_effect [K]` for the K strongest pairs, and
  `e{i}.values [n_q, n_k]` (every pair) when that is small;
- the graph JSON's optional top-level `attention` object (`to_json`): the same edges and, per
  explanation, the strongest pairs and terms with labels (documented in docs/attention.md).

Files are read as untrusted input: format, version, shapes and indices are checked, and a bad
file raises `GraphFileError` naming it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from safetensors.torch import save_file

from circuit_atlas.graph.graph import Graph, GraphFileError, read_format_json, read_tensor_file
from circuit_atlas.io.atomic import atomic_files
from circuit_atlas.graph.prune import PrunedGraph

ATTENTION_FORMAT = "circuit-atlas-attention"
ATTENTION_VERSION = 1
ATTENTION_JSON = "attention.json"
ATTENTION_TENSORS = "attention.safetensors"
FULL_VALUES_LIMIT = 1 << 18  # pairs stored in full below this many (1 MiB of float32)


@dataclass
class StoredExplanation:
    """One QK explanation as stored: scalars, terms, each term's total, the strongest pairs."""

    meta: dict[str, Any]  # layer, head, query/key position and token, score, logit, weight, ...
    query_terms: list[dict[str, Any]]
    key_terms: list[dict[str, Any]]
    query_totals: torch.Tensor
    key_totals: torch.Tensor
    pair_index: torch.Tensor  # [K, 2] int64
    pair_value: torch.Tensor  # [K]
    pair_weight_effect: torch.Tensor  # [K]
    values: torch.Tensor | None = None  # [n_q, n_k] when small

    @property
    def key(self) -> tuple[int, int, int, int]:
        m = self.meta
        return (m["layer"], m["head"], m["query_position"], m["key_position"])

    def top_pairs(self, n: int = 10) -> list[dict[str, Any]]:
        out = []
        for (i, j), value, effect in zip(self.pair_index[:n].tolist(), self.pair_value[:n].tolist(),
                                         self.pair_weight_effect[:n].tolist()):
            out.append({"query_term": self.query_terms[i]["id"], "key_term": self.key_terms[j]["id"],
                        "value": value, "weight_effect": effect})
        return out

    def top_terms(self, side: str, n: int = 10) -> list[dict[str, Any]]:
        terms, totals = ((self.query_terms, self.query_totals) if side == "query"
                         else (self.key_terms, self.key_totals))
        order = torch.argsort(totals.abs(), descending=True, stable=True)[:n]
        return [{**terms[i], "value": float(totals[i])} for i in order.tolist()]

    def to_json(self, top: int = 10) -> dict[str, Any]:
        pairs = self.top_pairs(top)
        labels = {t["id"]: t["label"] for t in self.query_terms + self.key_terms}
        shown = {p[k] for p in pairs for k in ("query_term", "key_term")}
        return {**self.meta, "n_query_terms": len(self.query_terms),
                "n_key_terms": len(self.key_terms), "pairs": pairs,
                "query_terms": self.top_terms("query", top), "key_terms": self.top_terms("key", top),
                "labels": {i: labels[i] for i in sorted(shown)}}


@dataclass
class GraphAttention:
    """Per-head edges and QK explanations precomputed for one graph (see the module docstring).

    `edges[i]` is an `EdgeHeads.to_json()` dict whose head rows carry `explanation`: the index in
    `explanations` of that head's QK explanation (None when it has none).
    """

    model_name: str
    prompt_tokens: list[str]
    hop: str
    settings: dict[str, Any]
    edges: list[dict[str, Any]]
    explanations: list[StoredExplanation] = field(default_factory=list)

    # --- look-ups ------------------------------------------------------------------------------
    def edge(self, source: str, target: str) -> dict[str, Any] | None:
        return next((e for e in self.edges if e["source"] == source and e["target"] == target), None)

    def explanation(self, layer: int, head: int, query_position: int | None = None,
                    key_position: int | None = None) -> StoredExplanation | None:
        for stored in self.explanations:
            l, h, q, k = stored.key
            if (l, h) == (layer, head) and query_position in (None, q) and key_position in (None, k):
                return stored
        return None

    # --- JSON (the graph-JSON extension) -------------------------------------------------------------
    def to_json(self, top: int = 10, *, nodes: Iterable[str] | None = None) -> dict[str, Any]:
        """The graph JSON's `attention` object; with `nodes`, only edges between those nodes."""
        keep = None if nodes is None else set(nodes)
        edges = [e for e in self.edges if keep is None or (e["source"] in keep and e["target"] in keep)]
        used = sorted({row["explanation"] for e in edges for row in e["heads"]
                       if row.get("explanation") is not None})
        renumber = {old: new for new, old in enumerate(used)}
        edges = [{**e, "heads": [{**row, "explanation": renumber.get(row.get("explanation"))}
                                 for row in e["heads"]]} for e in edges]
        return {"format": ATTENTION_FORMAT, "version": ATTENTION_VERSION, "hop": self.hop,
                "settings": dict(self.settings), "edges": edges,
                "explanations": [self.explanations[i].to_json(top) for i in used]}

    # --- files -----------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write `attention.json` and `attention.safetensors` into `directory` (atomically, as
        `Graph.save` does: a failed save leaves the old files and no temp files)."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        described = []
        for i, stored in enumerate(self.explanations):
            for name in ("query_totals", "key_totals", "pair_index", "pair_value", "pair_weight_effect"):
                tensors[f"e{i}.{name}"] = getattr(stored, name).contiguous()
            if stored.values is not None:
                tensors[f"e{i}.values"] = stored.values.contiguous()
            described.append({**stored.meta, "query_terms": stored.query_terms,
                              "key_terms": stored.key_terms})
        meta = {"format": ATTENTION_FORMAT, "version": ATTENTION_VERSION, "model": self.model_name,
                "prompt_tokens": self.prompt_tokens, "hop": self.hop, "settings": self.settings,
                "edges": self.edges, "explanations": described}
        with atomic_files(folder / ATTENTION_TENSORS, folder / ATTENTION_JSON) as (tmp_tensors, tmp_json):
            save_file(tensors, str(tmp_tensors), metadata={"format": ATTENTION_FORMAT})
            tmp_json.write_text(json.dumps(meta, indent=1, ensure_ascii=False, allow_nan=False),
                                encoding="utf-8")
        return folder

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> "GraphAttention":
        folder = Path(directory)
        meta = _read_json(folder / ATTENTION_JSON)
        tensors = read_tensor_file(folder / ATTENTION_TENSORS, "attention tensor")
        explanations = [_stored(folder, i, item, tensors) for i, item in enumerate(meta["explanations"])]
        edges = meta["edges"]
        _check_edges(folder / ATTENTION_JSON, edges, len(explanations))
        return cls(model_name=str(meta.get("model", "")), prompt_tokens=list(meta.get("prompt_tokens", [])),
                   hop=str(meta.get("hop", "last")), settings=dict(meta.get("settings") or {}),
                   edges=edges, explanations=explanations)

    @staticmethod
    def exists(directory: str | os.PathLike[str]) -> bool:
        return (Path(directory) / ATTENTION_JSON).is_file()


# ---------------------------------------------------------------------- choosing edges
def strongest_cross_position_edges(graph: Graph, pruned: PrunedGraph, n: int) -> list[tuple[int, int, float]]:
    """(source, target, weight) of the `n` strongest kept edges whose ends sit at different
    positions (dense indices), strongest first."""
    targets, sources, weights = pruned.kept_edges()
    kept = pruned.node_mask[targets] & pruned.node_mask[sources]
    targets, sources, weights = targets[kept], sources[kept], weights[kept]
    positions = node_positions(graph)
    moved = positions[targets] != positions[sources]
    targets, sources, weights = targets[moved], sources[moved], weights[moved]
    order = torch.argsort(weights.abs(), descending=True, stable=True)[:n]
    return [(int(sources[i]), int(targets[i]), float(weights[i])) for i in order.tolist()]


def node_positions(graph: Graph) -> torch.Tensor:
    """int64 [N]: the prompt position of every node, dense order (logits: the last position)."""
    positions = torch.full((graph.n_nodes,), graph.n_positions - 1, dtype=torch.long)
    positions[: graph.n_selected] = graph.feature_coords[:, 1]
    positions[graph.error_range.start : graph.error_range.stop] = torch.arange(graph.n_errors) % graph.n_positions
    positions[graph.token_range.start : graph.token_range.stop] = torch.arange(graph.n_positions)
    return positions


# ---------------------------------------------------------------------- reading files
def _read_json(path: Path) -> dict[str, Any]:
    meta = read_format_json(path, kind="attention", format_name=ATTENTION_FORMAT,
                            version_key="version", max_version=ATTENTION_VERSION)
    for key, kind in (("edges", list), ("explanations", list)):
        if not isinstance(meta.get(key), kind):
            raise GraphFileError(f"{path}: '{key}' must be a list")
    return meta


def _stored(folder: Path, i: int, item: Any, tensors: Mapping[str, torch.Tensor]) -> StoredExplanation:
    where = folder / ATTENTION_JSON
    if not isinstance(item, dict):
        raise GraphFileError(f"{where}: explanation {i} is not an object")
    terms = {}
    for side in ("query_terms", "key_terms"):
        value = item.get(side)
        if not isinstance(value, list) or not all(isinstance(t, dict) and isinstance(t.get("id"), str)
                                                  and isinstance(t.get("label"), str) for t in value):
            raise GraphFileError(f"{where}: explanation {i} has no valid '{side}' list")
        terms[side] = value
    for key in ("layer", "head", "query_position", "key_position"):
        if isinstance(item.get(key), bool) or not isinstance(item.get(key), int):
            raise GraphFileError(f"{where}: explanation {i} lacks an integer '{key}'")
    n_q, n_k = len(terms["query_terms"]), len(terms["key_terms"])
    got = {}
    for name, shape in (("query_totals", (n_q,)), ("key_totals", (n_k,)), ("pair_index", None),
                        ("pair_value", None), ("pair_weight_effect", None)):
        tensor = tensors.get(f"e{i}.{name}")
        if tensor is None or (shape is not None and tuple(tensor.shape) != shape):
            raise GraphFileError(f"{folder / ATTENTION_TENSORS}: tensor e{i}.{name} is missing or "
                                 f"has the wrong shape (expected {shape or 'a pair list'})")
        got[name] = tensor
    index = got["pair_index"]
    n_pairs = index.shape[0] if index.dim() == 2 else -1
    if (index.dim() != 2 or index.shape[1] != 2 or index.dtype != torch.int64
            or got["pair_value"].shape != (n_pairs,) or got["pair_weight_effect"].shape != (n_pairs,)
            or (n_pairs and (int(index.min()) < 0 or int(index[:, 0].max()) >= n_q
                             or int(index[:, 1].max()) >= n_k))):
        raise GraphFileError(f"{folder / ATTENTION_TENSORS}: pairs of explanation {i} do not index "
                             f"its {n_q} query and {n_k} key terms")
    values = tensors.get(f"e{i}.values")
    if values is not None and tuple(values.shape) != (n_q, n_k):
        raise GraphFileError(f"{folder / ATTENTION_TENSORS}: e{i}.values has shape "
                             f"{tuple(values.shape)}, expected ({n_q}, {n_k})")
    meta = {k: v for k, v in item.items() if k not in terms}
    return StoredExplanation(meta, terms["query_terms"], terms["key_terms"], got["query_totals"].float(),
                             got["key_totals"].float(), index, got["pair_value"].float(),
                             got["pair_weight_effect"].float(), None if values is None else values.float())


def _check_edges(path: Path, edges: list[Any], n_explanations: int) -> None:
    for i, edge in enumerate(edges):
        if not isinstance(edge, dict) or not isinstance(edge.get("heads"), list) \
                or not all(isinstance(edge.get(k), str) for k in ("source", "target")):
            raise GraphFileError(f"{path}: edge {i} lacks source, target or heads")
        for row in edge["heads"]:
            ref = row.get("explanation") if isinstance(row, dict) else "?"
            if ref is not None and (isinstance(ref, bool) or not isinstance(ref, int)
                                    or not 0 <= ref < n_explanations):
                raise GraphFileError(f"{path}: edge {i} names explanation {ref!r}, outside "
                                     f"0..{n_explanations - 1}")


__all__ = ["ATTENTION_JSON", "ATTENTION_TENSORS", "GraphAttention", "StoredExplanation",
           "explain_graph_attention", "node_positions", "strongest_cross_position_edges"]
