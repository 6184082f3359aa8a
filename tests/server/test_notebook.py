"""`show_graph`: the inline explorer for notebooks."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.graph import random_graph
from circuit_atlas.server.notebook import ExplorerView, show_graph
from circuit_atlas.graph.bundle import write_graph_bundle


def test_show_graph_serves_the_graph_in_an_iframe(tmp_path: Path) -> None:
    graph = random_graph(n_layers=2, n_pos=4, n_sel=12, n_logits=2, seed=3)
    view = show_graph(graph, data_dir=tmp_path, slug="nb", node_threshold=0.7)
    assert isinstance(view, ExplorerView)
    html = view._repr_html_()
    assert html.startswith("<iframe") and "127.0.0.1" in html
    query = parse_qs(urlparse(view.url).query)
    assert query["graph"] == ["nb"] and query["pruningThreshold"] == ["0.7"]
    base = view.url.split("?")[0]
    listing = httpx.get(f"{base}api/graphs", timeout=10).json()
    assert "nb" in {g["id"] for g in listing["graphs"]}
    pruned = httpx.get(f"{base}api/graphs/nb", params={"node_threshold": 0.7}, timeout=10).json()
    assert pruned["metadata"]["prompt"] == graph.prompt
    # A second graph reuses the same server and gets its own id.
    second = show_graph(graph, data_dir=tmp_path)
    assert second.url.split("?")[0] == base and second.graph_id != "nb"


def test_show_graph_opens_an_existing_folder(tmp_path: Path) -> None:
    graph = random_graph(n_layers=2, n_pos=4, n_sel=8, n_logits=2, seed=4)
    write_graph_bundle(graph, tmp_path, "saved")
    view = show_graph(tmp_path, url_template="/proxy/{port}/")
    assert view.graph_id == "saved" and view.url.startswith("/proxy/")


def test_show_graph_rejects_other_things(tmp_path: Path) -> None:
    with pytest.raises(CircuitAtlasError, match="Graph or a folder"):
        show_graph({"nodes": []})
    with pytest.raises(CircuitAtlasError, match="not a folder"):
        show_graph(tmp_path / "missing")
    with pytest.raises(CircuitAtlasError, match="holds no graphs"):
        show_graph(tmp_path)


def test_graph_show_method_renders_the_same_explorer(tmp_path: Path) -> None:
    graph = random_graph(n_layers=2, n_pos=4, n_sel=8, n_logits=2, seed=5)
    view = graph.show(data_dir=tmp_path, slug="via-method")
    assert isinstance(view, ExplorerView) and view.graph_id == "via-method"
    base = view.url.split("?")[0]
    assert httpx.get(f"{base}api/graphs/via-method", timeout=10).json()["metadata"]["prompt"] == graph.prompt
