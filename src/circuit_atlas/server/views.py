"""Pure functions over graph-JSON documents (`docs/graph-json.md`): threshold views and
neighbourhoods.

These work on the dict form so the same code serves graphs that exist only as JSON files and
graphs pruned from a native `Graph`.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

ALWAYS_KEPT_TYPES = frozenset({"embedding", "logit"})
SOURCE_ONLY_TYPES = frozenset({"embedding", "mlp reconstruction error", "lorsa error"})


def filter_by_influence(doc: Mapping[str, Any], node_threshold: float) -> dict[str, Any]:
    """Keep the nodes circuit-tracer's frontend's pruning slider keeps, and their links.

    A node stays when it is an embedding or logit node or its cumulative ``influence`` is at most
    ``node_threshold`` (`docs/graph-json.md` §7: smaller means more important); nodes without an
    influence value stay, since nothing says they are unimportant. Links need both ends, and
    feature/error nodes left without any link are dropped, as circuit-tracer's writer does.
    """
    kept: list[dict[str, Any]] = []
    for node in doc.get("nodes", []):
        influence = node.get("influence")
        if (
            node.get("feature_type") in ALWAYS_KEPT_TYPES
            or influence is None
            or influence <= node_threshold
        ):
            kept.append(node)
    kept_ids = {node["node_id"] for node in kept}
    links = [
        link
        for link in doc.get("links", [])
        if link.get("source") in kept_ids and link.get("target") in kept_ids
    ]
    linked = {link["source"] for link in links} | {link["target"] for link in links}
    nodes = [
        node
        for node in kept
        if node.get("feature_type") in ALWAYS_KEPT_TYPES or node["node_id"] in linked
    ]
    out = {key: value for key, value in doc.items() if key not in ("nodes", "links")}
    out["nodes"] = nodes
    out["links"] = links
    return out


def node_label(
    node: Mapping[str, Any], annotations: Mapping[str, Any] | None = None
) -> str:
    """The label to show: the node's own annotation, then its feature's, then its ``clerp``."""
    if annotations:
        own = annotations.get("node_labels", {}).get(node.get("node_id"))
        if own:
            return own
        if node.get("feature_type") not in ALWAYS_KEPT_TYPES | SOURCE_ONLY_TYPES:
            shared = annotations.get("feature_labels", {}).get(str(node.get("feature")))
            if shared:
                return shared
    return node.get("clerp") or ""


def _edge_rows(
    links: Iterable[Mapping[str, Any]],
    own_key: str,
    other_key: str,
    node_id: str,
    nodes_by_id: Mapping[str, Mapping[str, Any]],
    annotations: Mapping[str, Any] | None,
) -> list[dict[str, Any]]:
    rows = []
    for link in links:
        if link.get(own_key) != node_id:
            continue
        other = link[other_key]
        other_node = nodes_by_id.get(other, {"node_id": other})
        rows.append(
            {
                "node_id": other,
                "weight": float(link["weight"]),
                "label": node_label(other_node, annotations),
                "feature": other_node.get("feature"),
                "feature_type": other_node.get("feature_type"),
                "layer": other_node.get("layer"),
                "ctx_idx": other_node.get("ctx_idx"),
            }
        )
    rows.sort(key=lambda row: (-abs(row["weight"]), row["node_id"]))
    return rows


def neighbourhood(
    doc: Mapping[str, Any],
    node_id: str,
    annotations: Mapping[str, Any] | None = None,
    limit: int | None = None,
) -> dict[str, Any] | None:
    """A node with its incoming and outgoing links, strongest (by |weight|) first.

    Returns ``None`` when the node is not in ``doc``. ``incoming`` lists the sources feeding the
    node; ``outgoing`` the targets it feeds. Totals are counted before ``limit`` truncates.
    """
    nodes_by_id = {node["node_id"]: node for node in doc.get("nodes", [])}
    node = nodes_by_id.get(node_id)
    if node is None:
        return None
    links = doc.get("links", [])
    incoming = _edge_rows(links, "target", "source", node_id, nodes_by_id, annotations)
    outgoing = _edge_rows(links, "source", "target", node_id, nodes_by_id, annotations)
    return {
        "node": {**node, "label": node_label(node, annotations)},
        "incoming": incoming[:limit] if limit else incoming,
        "outgoing": outgoing[:limit] if limit else outgoing,
        "n_incoming": len(incoming),
        "n_outgoing": len(outgoing),
        "incoming_abs_sum": sum(abs(row["weight"]) for row in incoming),
        "outgoing_abs_sum": sum(abs(row["weight"]) for row in outgoing),
    }
