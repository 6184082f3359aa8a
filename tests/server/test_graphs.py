"""The one graph interface of the server (`ServedGraph`), on both implementations: a native
bundle's `Graph` and a graph-JSON document of the same graph answer alike where both can."""

from __future__ import annotations

import inspect

import pytest

from circuit_atlas.graph import graph_scores, to_graph_json
from circuit_atlas.server.graphs import ScoresUnavailable, ServedGraph, Steerable
from circuit_atlas.server.json_graph import JsonGraph, JsonSteerable
from circuit_atlas.server.native import NativeGraph

MEMBERS = [name for name, _ in inspect.getmembers(ServedGraph) if not name.startswith("_")]
MEMBERS += list(ServedGraph.__annotations__)


@pytest.fixture()
def both(graph):
    full = to_graph_json(graph, "g", 1.0, 1.0)
    return NativeGraph(graph, "g", "g"), JsonGraph(full, "g-json", "g")


def test_both_implement_every_member_of_the_protocol(both):
    for served in both:
        missing = [name for name in MEMBERS if not hasattr(served, name)]
        assert missing == [], f"{type(served).__name__} lacks {missing}"
    for steerable in (NativeGraph, JsonSteerable):
        for name in ("node_kind", "feature_coords", *Steerable.__annotations__):
            assert hasattr(steerable, name) or name in steerable.__dataclass_fields__


def test_views_and_neighbourhoods_agree(both, graph):
    native, json_graph = both
    native_view, applied = native.view(1.0, 1.0)
    json_view, not_applied = json_graph.view(1.0, 1.0)
    assert applied == 1.0 and not_applied is None
    assert [n["node_id"] for n in native_view["nodes"]] == [n["node_id"] for n in json_view["nodes"]]
    feature = next(n["node_id"] for n in json_view["nodes"]
                   if n["feature_type"] == "cross layer transcoder")
    from_json = json_graph.full_neighbourhood(feature, {}, None)
    from_native = native.full_neighbourhood(feature, {}, None)
    native_weights = {(r["node_id"], round(r["weight"], 6)) for r in from_native["incoming"]}
    assert {(r["node_id"], round(r["weight"], 6)) for r in from_json["incoming"]} <= native_weights
    assert native.full_neighbourhood("no_such_node", {}, None) is None
    assert json_graph.full_neighbourhood("no_such_node", {}, None) is None


def test_subgraphs_report_what_is_missing(both):
    native, json_graph = both
    doc_ids = [n["node_id"] for n in json_graph.doc["nodes"]][:6]
    for served in both:
        nodes, links, missing = served.subgraph([*doc_ids, "9_9_9"])
        assert [n["node_id"] for n in nodes] == doc_ids and missing == ["9_9_9"]
        assert all(link["source"] in doc_ids and link["target"] in doc_ids for link in links)


def test_scores_need_the_native_graph(both, graph):
    native, json_graph = both
    expected = graph_scores(graph)
    assert native.scores(None) == pytest.approx(
        {"replacement": expected.replacement, "completeness": expected.completeness})
    with pytest.raises(ScoresUnavailable, match="only a JSON file"):
        json_graph.scores(None)


def test_native_nodes_for_steering(both, graph):
    native, _ = both
    for index in (0, graph.n_selected, graph.token_range.start, graph.n_sources):
        node_id = graph.node_id(index)
        assert native.node_kind(node_id) == graph.node_kind(index)
    assert native.feature_coords(graph.node_id(3)) == tuple(int(v) for v in graph.feature_coords[3])
    assert native.node_kind("no_such_node") is None
