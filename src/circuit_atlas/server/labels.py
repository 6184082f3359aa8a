"""Feature labels for every node the explorer sends, whichever source has them.

Why the server fills them in: a native graph is pruned on demand without labels, and a node is
named in many places (the graph's tooltips, the node panel's edge rows, the subgraph pane, the
Steer panel). Filling each node's ``clerp`` (and each edge row's ``label``) once, here, makes every
one of those show the same name. Sources, most trusted first:

1. the node's own ``clerp`` in the graph file;
2. the file's saved ``qParams.clerps`` (circuit-tracer's frontend saves labels there);
3. the bundle's ``feature-labels.json`` (the dashboard labels the graph was traced with);
4. the feature store served with ``--features`` (its current labels), used only when the store
   and the graph name the same transcoder set, or one of them names none, so that a store built
   for other transcoders never labels this graph's features.

The user's own annotations (``<slug>.annotations.json``) win over all of these; ``views.node_label``
and the web app apply them on top.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from circuit_atlas.io.cantor import cantor_unpair

FeatureKey = tuple[int, int]  # (layer, feature index)
FEATURE_NODE_TYPES = frozenset({"cross layer transcoder", "transcoder"})


def feature_key(node: Mapping[str, Any], cantor: bool) -> FeatureKey | None:
    """(layer, index) of a feature node; None for other nodes or unusable values.

    ``cantor``: the document's ``schema_version`` is 1, so ``feature`` is the Cantor pair of layer
    and index (`docs/graph-json.md` §6); otherwise ``feature`` is the index and ``layer`` the layer.
    """
    if node.get("feature_type") not in FEATURE_NODE_TYPES:
        return None
    feature = node.get("feature")
    if not isinstance(feature, int) or isinstance(feature, bool) or feature < 0:
        return None
    if cantor:
        return cantor_unpair(feature)
    try:
        return int(str(node.get("layer"))), feature
    except ValueError:
        return None


def uses_cantor(doc: Mapping[str, Any]) -> bool:
    """Whether a graph-JSON document's feature values are Cantor pairs (schema_version 1)."""
    metadata = doc.get("metadata")
    return isinstance(metadata, Mapping) and metadata.get("schema_version") == 1


@dataclass(frozen=True)
class LabelBook:
    """The labels one graph can draw on: by feature value (``qParams.clerps``), then by
    (layer, index) from each map of ``by_key`` in turn (bundle, then store)."""

    by_value: Mapping[int, str] = field(default_factory=dict)
    by_key: tuple[Mapping[FeatureKey, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.by_value) or any(self.by_key)

    def lookup(self, node: Mapping[str, Any], cantor: bool) -> str:
        """The label of a feature node from these sources, or ""."""
        if node.get("feature_type") not in FEATURE_NODE_TYPES:
            return ""
        value = node.get("feature")
        if isinstance(value, int) and value in self.by_value:
            return self.by_value[value]
        key = feature_key(node, cantor)
        for source in self.by_key if key is not None else ():
            text = source.get(key)
            if text:
                return text
        return ""

    def with_clerps(self, clerps: Any) -> "LabelBook":
        """This book with a graph file's ``qParams.clerps`` (``[[feature value, label], ...]``)
        in front."""
        by_value: dict[int, str] = {}
        for pair in clerps if isinstance(clerps, list) else ():
            if isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[1], str):
                try:
                    by_value.setdefault(int(pair[0]), pair[1])
                except (TypeError, ValueError):
                    continue
        return LabelBook(by_value, self.by_key) if by_value else self


def label_nodes(nodes: Iterable[Mapping[str, Any]], book: LabelBook, cantor: bool) -> list[dict]:
    """The nodes, each unlabelled feature node replaced by a copy with its ``clerp`` filled
    (the inputs are never modified: they may be a cached document's)."""
    out = []
    for node in nodes:
        if book and not node.get("clerp"):
            text = book.lookup(node, cantor)
            if text:
                node = {**node, "clerp": text}
        out.append(node if isinstance(node, dict) else dict(node))
    return out


def label_rows(rows: Iterable[dict[str, Any]], book: LabelBook, cantor: bool) -> None:
    """Fill the empty ``label`` of neighbourhood rows (which carry ``feature``, ``layer`` and
    ``feature_type``) in place."""
    if not book:
        return
    for row in rows:
        if not row.get("label"):
            row["label"] = book.lookup(row, cantor)
