"""`Graph.show` calls the viewer installed in `circuit_atlas.viewer`: the package installs the
explorer (so the graph layer never imports the server), and another one can replace it."""

from __future__ import annotations

import pytest

import circuit_atlas
from circuit_atlas import viewer
from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.graph import random_graph


@pytest.fixture()
def graph():
    return random_graph(n_layers=2, n_pos=3, n_sel=6, n_logits=2, seed=1)


def test_the_package_installs_the_explorer(graph, monkeypatch):
    installed = viewer.get_viewer()
    assert installed is not None
    seen = {}
    monkeypatch.setattr("circuit_atlas.server.notebook.show_graph",
                        lambda g, **options: seen.update(graph=g, **options) or "view")
    monkeypatch.delitem(vars(circuit_atlas), "show_graph", raising=False)  # lazy cache
    assert graph.show(slug="x") == "view" and seen == {"graph": graph, "slug": "x"}


def test_another_viewer_replaces_it_and_none_is_a_clear_error(graph):
    calls = []
    previous = viewer.set_viewer(lambda g, **options: calls.append((g, options)) or "mine")
    try:
        assert graph.show(height=300) == "mine" and calls == [(graph, {"height": 300})]
        viewer.set_viewer(None)
        with pytest.raises(CircuitAtlasError, match="no viewer|none is installed"):
            graph.show()
    finally:
        viewer.set_viewer(previous)
