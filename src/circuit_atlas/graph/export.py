"""Export a pruned graph to the frontend / Neuronpedia JSON format (`docs/graph-json.md`),
maintain the `graph-metadata.json` index, and read such files back.

The writer follows circuit-tracer's writer field by field (key order, types, link order), with one
deliberate change: error nodes use the collision-free id `{l}_-1_{p}` / `{l}_-1-{p}` that later
upstream versions and Neuronpedia's graph server use (`docs/graph-json.md` §5.2). The reader
accepts both error-id forms and both the list and the string forms of `qParams` (§4).
"""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path
from typing import Any, Mapping

from circuit_atlas._version import __version__
from circuit_atlas.errors import GraphFileError
from circuit_atlas.graph.graph import Graph
from circuit_atlas.graph.prune import PrunedGraph, prune
from circuit_atlas.io.atomic import atomic_write_json
from circuit_atlas.io.cantor import cantor_pair
from circuit_atlas.io.checks import check_slug
from circuit_atlas.io.untrusted import UntrustedJsonError, parse_json, read_json

SCHEMA_VERSION = 1
METADATA_FILE = "graph-metadata.json"
SCHEMA_FILE = Path(__file__).with_name("graph_schema.json")
FEATURE_TYPES = {
    "feature": "cross layer transcoder",  # also for PLT features, as circuit-tracer writes
    "error": "mlp reconstruction error",
    "token": "embedding",
    "logit": "logit",
}
DEFAULT_QPARAMS: dict[str, Any] = {
    "pinnedIds": [],
    "supernodes": [],
    "linkType": "both",
    "clickedId": "",
    "sg_pos": "",
}

Labels = Mapping[Any, str]  # node_id -> label, or (layer, feature) -> label for every position


# ---------------------------------------------------------------------- writer
def to_graph_json(
    graph: Graph,
    slug: str,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    labels: Labels | None = None,
    *,
    scan: str | None = None,
    pruned: PrunedGraph | None = None,
    attention: Any | None = None,
) -> dict[str, Any]:
    """The pruned graph as a graph-JSON dict (`metadata`, `qParams`, `nodes`, `links`).

    Args:
        slug: graph identifier (also the file stem when written).
        node_threshold, edge_threshold: pruning thresholds in [0, 1] (`docs/algorithm.md` §10).
        labels: optional clerps, keyed by node id or by `(layer, feature)` (every position);
            a node-id key wins. Logit nodes always get `Output "<token>" (p=…)`.
        scan: overrides `graph.transcoder_scan`; when both are missing the model name is used.
        pruned: reuse an existing `prune(graph, …)` result (its thresholds are then used).
        attention: precomputed attention explanations (`graph.attention.GraphAttention`); its
            edges between written nodes go into the optional top-level `attention` object.
    """
    check_slug(slug)
    problem = graph.first_non_finite()
    if problem is not None:
        raise GraphFileError(
            f"the graph holds a non-finite number ({problem}), which graph JSON cannot carry; "
            "it comes from numerical trouble while tracing (try float32) or from an edited file"
        )
    if pruned is None:
        pruned = prune(graph, node_threshold, edge_threshold)
    elif pruned.graph is not graph:
        raise GraphFileError("to_graph_json: `pruned` was computed for another graph")
    links, touched = _links(graph, pruned)
    nodes = _nodes(graph, pruned, touched, labels or {})
    data = {
        "metadata": _metadata(graph, slug, pruned, scan),
        "qParams": copy.deepcopy(DEFAULT_QPARAMS),
        "nodes": nodes,
        "links": links,
    }
    if attention is not None:
        data["attention"] = attention.to_json(nodes=[node["node_id"] for node in nodes])
    return data


def _scan_fields(graph: Graph, scan: str | None) -> tuple[str, list[str]]:
    """(`scan`, `transcoder_list`). A per-layer list of scans becomes a stable `custom-` id."""
    value = scan if scan is not None else graph.transcoder_scan
    if value is None:
        return graph.model_name, []
    if isinstance(value, list):
        digest = hashlib.sha256("-".join(value).encode("utf-8")).hexdigest()[:16]
        return f"custom-{digest}", list(value)
    return str(value), []


def _metadata(graph: Graph, slug: str, pruned: PrunedGraph, scan: str | None) -> dict[str, Any]:
    scan_value, transcoder_list = _scan_fields(graph, scan)
    return {
        "slug": slug,
        "scan": scan_value,
        "transcoder_list": transcoder_list,
        "prompt_tokens": list(graph.tokens),
        "prompt": graph.prompt,
        "node_threshold": pruned.node_threshold,
        "schema_version": SCHEMA_VERSION,
        "generation_settings": dict(graph.settings),
        "pruning_settings": {
            "node_threshold": pruned.node_threshold,
            "edge_threshold": pruned.edge_threshold,
        },
        # `model` lets a reader (our explorer's steering) check the model, not just the scan.
        "info": {"generator": {"name": "circuit-atlas", "version": __version__},
                 **({"model": graph.model_name} if graph.model_name else {})},
    }


def _links(graph: Graph, pruned: PrunedGraph) -> tuple[list[dict[str, Any]], set[int]]:
    """Kept edges between kept nodes, row-major; and the set of nodes they touch."""
    targets, sources, weights = pruned.kept_edges()
    both_kept = pruned.node_mask[targets] & pruned.node_mask[sources]
    targets, sources, weights = targets[both_kept], sources[both_kept], weights[both_kept]
    ids = graph.node_ids()
    links = [
        {"source": ids[s], "target": ids[t], "weight": w}
        for t, s, w in zip(targets.tolist(), sources.tolist(), weights.tolist())
    ]
    touched = set(targets.tolist()) | set(sources.tolist())
    return links, touched


def _nodes(
    graph: Graph, pruned: PrunedGraph, touched: set[int], labels: Labels
) -> list[dict[str, Any]]:
    """Kept nodes in dense order: features/errors only if a link touches them; all tokens and
    logits."""
    nodes = []
    always = graph.token_range.start
    for index in pruned.kept_nodes.tolist():
        if index < always and index not in touched:
            continue
        nodes.append(_node(graph, index, pruned, labels))
    return nodes


def _node(graph: Graph, index: int, pruned: PrunedGraph, labels: Labels) -> dict[str, Any]:
    kind = graph.node_kind(index)
    node_id = graph.node_id(index)
    influence: float | None = float(pruned.cumulative_scores[index])
    activation: float | None = None
    token_prob, is_target = 0.0, False
    if kind == "feature":
        layer, pos, feat = (int(v) for v in graph.feature_coords[index])
        feature, layer_str, js_id = cantor_pair(layer, feat), str(layer), f"{layer}_{feat}-0"
        activation = float(graph.selected_activations[index])
        clerp = labels.get(node_id, labels.get((layer, feat), ""))
    elif kind == "error":
        layer, pos = divmod(index - graph.n_selected, graph.n_positions)
        feature, layer_str, js_id = -1, str(layer), f"{layer}_-1-{pos}"
        clerp = labels.get(node_id, "")
    elif kind == "token":
        pos = index - graph.token_range.start
        token_id = int(graph.input_ids[pos])
        feature, layer_str, js_id = pos, "E", f"E_{token_id}-{pos}"
        clerp = labels.get(node_id, "")
    else:
        i = index - graph.n_sources
        pos, vocab_index = graph.n_positions - 1, int(graph.logit_token_ids[i])
        feature, layer_str, js_id = vocab_index, str(graph.n_layers + 1), f"L_{vocab_index}-{pos}"
        token_prob, is_target = float(graph.logit_probabilities[i]), i == 0
        clerp = f'Output "{graph.logit_tokens[i]}" (p={token_prob:.3f})'
        influence = None
    return {
        "node_id": node_id,
        "feature": feature,
        "layer": layer_str,
        "ctx_idx": pos,
        "feature_type": FEATURE_TYPES[kind],
        "token_prob": token_prob,
        "is_target_logit": is_target,
        "run_idx": 0,
        "reverse_ctx_idx": 0,
        "jsNodeId": js_id,
        "clerp": str(clerp),
        "influence": influence,
        "activation": activation,
    }


def write_graph_json(
    graph: Graph,
    out_dir: str | os.PathLike[str],
    slug: str,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    labels: Labels | None = None,
    *,
    scan: str | None = None,
    update_metadata: bool = True,
    indent: int | None = None,
    attention: Any | None = None,
) -> Path:
    """Write `<out_dir>/<slug>.json` and (by default) add it to `<out_dir>/graph-metadata.json`.
    Returns the graph file's path. `attention`: see `to_graph_json`."""
    data = to_graph_json(graph, slug, node_threshold, edge_threshold, labels, scan=scan,
                         attention=attention)
    return save_graph_json(data, out_dir, update_metadata=update_metadata, indent=indent)


def save_graph_json(data: Mapping[str, Any], out_dir: str | os.PathLike[str], *,
                    update_metadata: bool = True, indent: int | None = None) -> Path:
    """Write a `to_graph_json` document as `<out_dir>/<slug>.json` (and, by default, index it in
    `graph-metadata.json`); returns the file's path."""
    slug = check_slug(data["metadata"]["slug"])
    directory = _ensure_directory(Path(out_dir))
    path = directory / f"{slug}.json"
    _write_json_atomic(path, data, indent=indent)
    if update_metadata:
        update_graph_metadata(directory, data["metadata"])
    return path


def update_graph_metadata(directory: str | os.PathLike[str], metadata: Mapping[str, Any]) -> Path:
    """Add a graph's metadata to `<directory>/graph-metadata.json` (`docs/graph-json.md` §9): an entry
    with the same slug is removed and the new one appended at the end."""
    slug = metadata.get("slug") if isinstance(metadata, Mapping) else None
    if not isinstance(slug, str):
        raise GraphFileError("update_graph_metadata: metadata must be a dict with a 'slug'")
    path = _ensure_directory(Path(directory)) / METADATA_FILE
    index = {"graphs": []}
    if path.exists():
        index = _load_json(path)
        if not isinstance(index, dict) or not isinstance(index.get("graphs"), list):
            raise GraphFileError(f"{path} is not a graph index (expected {{\"graphs\": [...]}})")
    graphs = [g for g in index["graphs"] if not (isinstance(g, dict) and g.get("slug") == slug)]
    graphs.append(dict(metadata))
    index["graphs"] = graphs
    _write_json_atomic(path, index, indent=2)
    return path


def _ensure_directory(directory: Path) -> Path:
    if directory.exists() and not directory.is_dir():
        raise GraphFileError(f"output directory {directory} exists and is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GraphFileError(f"cannot create output directory {directory}: {exc}") from exc
    return directory


def _write_json_atomic(path: Path, data: Any, indent: int | None) -> None:
    """Strict JSON (no NaN), written atomically; a file system error names the file."""
    try:
        atomic_write_json(path, data, indent=indent, allow_nan=False)
    except OSError as exc:
        raise GraphFileError(f"cannot write {path}: {exc}") from exc


def _load_json(path: Path) -> Any:
    try:
        return read_json(path)
    except FileNotFoundError:
        raise GraphFileError(f"graph JSON file {path} does not exist") from None
    except IsADirectoryError:
        raise GraphFileError(f"{path} is a directory, not a graph JSON file") from None
    except (OSError, UntrustedJsonError) as exc:
        raise GraphFileError(f"{path} is not valid JSON: {exc}") from exc


# ---------------------------------------------------------------------- reader
def read_graph_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a graph JSON written by us, circuit-tracer or Neuronpedia, normalised:

    - `qParams.pinnedIds` a list of ids, `supernodes` a list of `[label, id, ...]` lists and
      `clerps` (when present) a list of `[feature, label]` pairs, whichever form was stored;
      missing `qParams` keys get the defaults;
    - error nodes (recognised by `feature_type`) renamed to the `{l}_-1_{p}` id form, with the
      links and `qParams` references rewritten; a legacy `0_{l}_{p}` id that is also a feature
      node's id cannot be resolved and raises GraphFileError;
    - node `layer` values as strings.
    """
    file = Path(path)
    data = _load_json(file)
    if not isinstance(data, dict):
        raise GraphFileError(f"{file}: a graph JSON file holds an object")
    missing = [key for key in ("metadata", "nodes", "links") if key not in data]
    if missing:
        raise GraphFileError(f"{file}: missing top-level key(s) {', '.join(missing)}")
    if not isinstance(data["nodes"], list) or not isinstance(data["links"], list):
        raise GraphFileError(f"{file}: 'nodes' and 'links' must be lists")
    nodes, renames = _normalise_nodes(file, data["nodes"])
    links = _normalise_links(file, data["links"], renames, {n["node_id"] for n in nodes})
    q_params = _normalise_qparams(file, data.get("qParams") or {}, renames)
    out = dict(data)
    out.update(nodes=nodes, links=links, qParams=q_params)
    return out


def _normalise_nodes(file: Path, raw: list[Any]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    nodes, renames = [], {}
    for i, node in enumerate(raw):
        if not isinstance(node, dict) or not isinstance(node.get("node_id"), str):
            raise GraphFileError(f"{file}: node {i} is not an object with a string 'node_id'")
        node = dict(node)
        if "layer" in node and node["layer"] is not None:
            node["layer"] = str(node["layer"])
        if node.get("feature_type") == FEATURE_TYPES["error"]:
            layer, pos = node.get("layer"), node.get("ctx_idx")
            if layer is None or not isinstance(pos, int):
                raise GraphFileError(f"{file}: error node {node['node_id']!r} lacks layer/ctx_idx")
            new_id = f"{layer}_-1_{pos}"
            if new_id != node["node_id"]:
                renames[node["node_id"]] = new_id
            node["node_id"], node["jsNodeId"] = new_id, f"{layer}_-1-{pos}"
        nodes.append(node)
    other_ids = {n["node_id"] for n in nodes if n.get("feature_type") != FEATURE_TYPES["error"]}
    clashes = sorted(old for old in renames if old in other_ids)
    if clashes:
        raise GraphFileError(
            f"{file}: legacy error node id(s) {clashes[:5]} are also ids of other nodes, so links "
            "naming them are ambiguous"
        )
    return nodes, renames


def _normalise_links(
    file: Path, raw: list[Any], renames: dict[str, str], node_ids: set[str]
) -> list[dict[str, Any]]:
    # One pass, no per-link sets or copies unless an id is renamed: files hold 10^5 links.
    links = []
    for i, link in enumerate(raw):
        if not isinstance(link, dict) or not ("source" in link and "target" in link
                                               and "weight" in link):
            raise GraphFileError(f"{file}: link {i} lacks source, target or weight")
        source, target = link["source"], link["target"]
        if renames:
            source, target = renames.get(source, source), renames.get(target, target)
        for end in (source, target):
            if end not in node_ids:
                raise GraphFileError(f"{file}: link {i} names unknown node {end!r}")
        if source is not link["source"] or target is not link["target"]:
            link = {**link, "source": source, "target": target}
        links.append(link)
    return links


def _normalise_qparams(file: Path, raw: Any, renames: dict[str, str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise GraphFileError(f"{file}: 'qParams' must be an object")
    q = copy.deepcopy(DEFAULT_QPARAMS)
    q.update({k: v for k, v in raw.items() if v is not None})
    pinned = q["pinnedIds"]
    if isinstance(pinned, str):
        pinned = [p for p in pinned.split(",") if p]
    q["pinnedIds"] = [renames.get(p, p) for p in _list_of(file, "pinnedIds", pinned)]
    supernodes = _parse_json_text(file, "supernodes", q["supernodes"])
    groups = []
    for group in _list_of(file, "supernodes", supernodes):
        if not isinstance(group, list) or not group:
            raise GraphFileError(f"{file}: qParams.supernodes holds a non-list group {group!r}")
        groups.append([group[0]] + [renames.get(m, m) for m in group[1:]])
    q["supernodes"] = groups
    if "clerps" in q:
        q["clerps"] = _list_of(file, "clerps", _parse_json_text(file, "clerps", q["clerps"]))
    if isinstance(q.get("clickedId"), str):
        q["clickedId"] = renames.get(q["clickedId"], q["clickedId"])
    return q


def _parse_json_text(file: Path, key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if not value.strip():
        return []
    try:
        return parse_json(value)
    except UntrustedJsonError as exc:
        raise GraphFileError(f"{file}: qParams.{key} is a string but not JSON: {exc}") from exc


def _list_of(file: Path, key: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise GraphFileError(f"{file}: qParams.{key} must be a list or its string form")
    return value
