"""Graph bundles: the on-disk layout `trace` writes and the explorer serves.

A data folder (``circuit-atlas serve DIR``) holds graphs in any of these places::

    DIR/<slug>/                     one graph bundle (written by write_graph_bundle)
        bundle.json                 {"format": "circuit-atlas-graph-bundle", "version": 1,
                                     "slug", "node_threshold", "edge_threshold",
                                     "summary": {created, model, transcoders, n_tokens,
                                     n_features, n_nodes, n_links, replacement,
                                     completeness}}  (summary: what the graph browser lists;
                                     older bundles lack it)
        graph/                      the native Graph (Graph.save / Graph.load)
        <slug>.json                 pruned graph JSON (docs/graph-json.md) at the default thresholds
        graph-metadata.json         frontend index of that JSON (docs/graph-json.md §9)
        <slug>.annotations.json     labels, supernodes, pinned sets (written by the server)
        feature-labels.json         dashboard labels of the graph's features, when traced with
                                    them (re-exports at other thresholds keep them)
        attention.json, attention.safetensors
                                    precomputed attention explanations, when made (GraphAttention;
                                    also in <slug>.json's optional "attention" object)
    DIR/<name>.json                 loose graph-JSON files, e.g. a circuit-tracer output folder
    DIR/<sub>/<name>.json           ... also one folder down
    DIR/<group>/<slug>/             bundles up to three folders down (e.g. the outputs of
                                    several `trace --prompts --out DIR/<group>` runs)
    DIR itself may be a bundle      (``serve graphs/dallas`` right after ``trace --out graphs/dallas``
                                     when trace wrote the bundle files straight into that folder)

A bundle may lack either the native graph (then thresholds filter the JSON's ``influence``
values and scores are unavailable) or the JSON (then it is pruned on demand).
Annotations for a loose ``<name>.json`` go to ``<name>.annotations.json`` beside it.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.graph.export import Labels, save_graph_json, to_graph_json
from circuit_atlas.graph.graph import Graph
from circuit_atlas.graph.scores import GraphScores, graph_scores
from circuit_atlas.io.atomic import atomic_write_json
from circuit_atlas.io.checks import check_slug, check_threshold
from circuit_atlas.io.untrusted import UntrustedJsonError, printable, read_json

BUNDLE_FORMAT = "circuit-atlas-graph-bundle"
BUNDLE_VERSION = 1
BUNDLE_FILE = "bundle.json"
NATIVE_DIR = "graph"
METADATA_FILE = "graph-metadata.json"
ANNOTATIONS_SUFFIX = ".annotations.json"
DEFAULT_NODE_THRESHOLD = 0.8
DEFAULT_EDGE_THRESHOLD = 0.98

# File names in a data folder that are never graphs.
LABELS_FILE = "feature-labels.json"
LABELS_FORMAT = "circuit-atlas-feature-labels"
NOT_GRAPH_FILES = frozenset({BUNDLE_FILE, METADATA_FILE, LABELS_FILE, "package.json", "tsconfig.json"})
MAX_BUNDLE_INFO_BYTES = 64 * 1024  # a real bundle.json is ~150 bytes
MAX_LABELS_FILE_BYTES = 64 * 1024 * 1024


def annotations_path_for(folder: Path, slug: str) -> Path:
    return Path(folder) / f"{slug}{ANNOTATIONS_SUFFIX}"


def read_bundle_info(folder: Path) -> dict[str, Any] | None:
    """The parsed ``bundle.json`` of ``folder``, or ``None`` when it is not a bundle.

    Its fields are not checked here: read them through `bundle_settings`."""
    path = Path(folder) / BUNDLE_FILE
    try:
        info = read_json(path, max_bytes=MAX_BUNDLE_INFO_BYTES)
    except (OSError, UntrustedJsonError):
        return None
    if not isinstance(info, dict) or info.get("format") != BUNDLE_FORMAT:
        return None
    return info


@dataclass(frozen=True)
class BundleSettings:
    """The fields of a ``bundle.json``, each checked. `slug` is None when the file names none or
    an invalid one; `problems` says which fields were refused (and replaced by defaults)."""

    slug: str | None
    node_threshold: float
    edge_threshold: float
    problems: tuple[str, ...] = ()


def bundle_settings(info: Mapping[str, Any] | None) -> BundleSettings:
    """Check every field a reader uses. Bundles are shared and downloaded, so a slug such as
    ``../../x`` (which would name files outside the bundle) or a threshold that is not a number
    in [0, 1] is refused and reported instead of used."""
    info = info or {}
    problems = []
    slug = info.get("slug")
    if slug is not None:
        try:
            slug = check_slug(slug)
        except CircuitAtlasError as exc:
            problems.append(f"{BUNDLE_FILE}: {exc}; the folder name is used instead")
            slug = None
    thresholds = {}
    for name, default in (("node_threshold", DEFAULT_NODE_THRESHOLD),
                          ("edge_threshold", DEFAULT_EDGE_THRESHOLD)):
        value = info.get(name, default)
        try:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise CircuitAtlasError(f"{name} must be a number, got {str(value)[:40]!r}")
            thresholds[name] = check_threshold(value, name)
        except CircuitAtlasError as exc:
            problems.append(f"{BUNDLE_FILE}: {exc}; the default {default} is used instead")
            thresholds[name] = default
    return BundleSettings(slug, thresholds["node_threshold"], thresholds["edge_threshold"],
                          tuple(problems))


def write_graph_bundle(
    graph: Graph,
    out_dir: str | Path,
    slug: str,
    node_threshold: float = DEFAULT_NODE_THRESHOLD,
    edge_threshold: float = DEFAULT_EDGE_THRESHOLD,
    *,
    labels: Labels | None = None,
    attention: Any | None = None,
    scores: GraphScores | None = None,
) -> Path:
    """Write ``graph`` as ``out_dir/<slug>/`` (layout in this module's docstring); return it.

    ``attention`` (a ``GraphAttention``) is saved beside the graph and summarised in its JSON.
    ``scores``: the graph's `graph_scores`, when the caller has them already (they are computed
    otherwise), for the summary the graph browser lists.

    The native graph is written to a temporary sibling folder first and swapped in, so a failed
    write never leaves a half-written graph under the bundle's name. An existing annotations file
    is kept, so re-tracing a prompt keeps the labels of nodes whose ids did not change.
    """
    check_slug(slug)
    node_threshold = check_threshold(node_threshold, "node_threshold")
    edge_threshold = check_threshold(edge_threshold, "edge_threshold")
    folder = Path(out_dir) / slug
    if folder.exists() and not folder.is_dir():
        raise CircuitAtlasError(f"cannot write graph bundle: {folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and read_bundle_info(folder) is None:
        raise CircuitAtlasError(
            f"cannot write graph bundle: {folder} already holds files that are not a "
            f"circuit-atlas bundle (no {BUNDLE_FILE}); choose another --out or slug"
        )
    folder.mkdir(parents=True, exist_ok=True)

    staging = Path(tempfile.mkdtemp(prefix=f".{NATIVE_DIR}.", dir=folder))
    try:
        graph.save(staging)
        final = folder / NATIVE_DIR
        old = None
        if final.exists():
            old = folder / f".{NATIVE_DIR}.old"
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        staging.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    if attention is not None:
        attention.save(folder)
    view = to_graph_json(graph, slug, node_threshold, edge_threshold, labels, attention=attention)
    save_graph_json(view, folder)
    _write_feature_labels(folder, graph, labels)
    atomic_write_json(
        folder / BUNDLE_FILE,
        {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "slug": slug,
            "node_threshold": node_threshold,
            "edge_threshold": edge_threshold,
            "summary": _summary(graph, view, scores if scores is not None else graph_scores(graph)),
        },
    )
    return folder


def _summary(graph: Graph, view: dict[str, Any], scores: GraphScores) -> dict[str, Any]:
    """What a list of graphs shows without loading any: when, what with, how big, how complete."""
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": graph.model_name,
        "transcoders": view["metadata"]["scan"],
        "n_tokens": len(graph.tokens),
        "n_features": int(graph.n_selected),
        "n_nodes": len(view["nodes"]),
        "n_links": len(view["links"]),
        "replacement": float(scores.replacement),
        "completeness": float(scores.completeness),
    }


def _write_feature_labels(folder: Path, graph: Graph, labels: Labels | None) -> None:
    """Keep the `(layer, feature)` labels of the graph's features beside it (or remove a stale
    file when re-traced without labels): the pruned JSON only holds those of the nodes it kept."""
    path = folder / LABELS_FILE
    keyed = {key: text for key, text in (labels or {}).items()
             if isinstance(key, tuple) and len(key) == 2 and text}
    present = {(int(layer), int(feature)) for layer, _pos, feature in graph.feature_coords.tolist()}
    kept = {f"{layer}:{feature}": keyed[(layer, feature)]
            for layer, feature in sorted(present) if (layer, feature) in keyed}
    if not kept:
        path.unlink(missing_ok=True)
        return
    atomic_write_json(path, {"format": LABELS_FORMAT, "labels": kept})


def read_feature_labels(folder: str | Path) -> dict[tuple[int, int], str]:
    """`{(layer, feature): label}` a bundle keeps beside its graph (empty when it has none)."""
    path = Path(folder) / LABELS_FILE
    try:
        data = read_json(path, max_bytes=MAX_LABELS_FILE_BYTES)
    except (OSError, UntrustedJsonError):
        return {}
    labels = data.get("labels") if isinstance(data, dict) else None
    out = {}
    for key, text in (labels.items() if isinstance(labels, dict) else ()):
        layer, _, feature = str(key).partition(":")
        if _small_number(layer) and _small_number(feature) and isinstance(text, str):
            out[(int(layer), int(feature))] = printable(text)
    return out


def _small_number(text: str) -> bool:
    """ASCII digits only (`str.isdigit` also accepts '²', which `int` refuses), at most 12."""
    return 0 < len(text) <= 12 and text.isascii() and text.isdigit()
