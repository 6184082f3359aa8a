"""The attention panel in Chromium, on the demo model's two-hop graph with its stored attention
explanations: the city -> region-feature edge's heads with their shares, a head's query-side x
key-side pairs, pinning their nodes, and the note on a same-position edge. The numbers on screen
are checked against the graph's own edge weight and the stored explanations."""

from __future__ import annotations

import pytest

import circuit_atlas
from circuit_atlas.attribution import explain_graph_attention
from circuit_atlas.demo import bundle
from circuit_atlas.graph.bundle import write_graph_bundle
from circuit_atlas.server.app import create_app
from circuit_atlas.server.runner import BackgroundServer

pytestmark = pytest.mark.browser

SOURCE, TARGET = "E_127_7", "0_479_8"  # " dallas" @7 -> the texas feature L0 #479 at " is" @8


@pytest.fixture(scope="module")
def attention_site(tmp_path_factory):
    model = circuit_atlas.load("demo", "demo")
    graph = circuit_atlas.attribute(model, bundle.DEFAULT_PROMPT, progress=False)
    attention = explain_graph_attention(model, graph, max_edges=4, progress=False)
    data = tmp_path_factory.mktemp("attention-web")
    write_graph_bundle(graph, data, "dallas", attention=attention)
    with BackgroundServer(create_app(data)) as server:  # no model: stored explanations only
        yield {"url": server.url, "graph": graph, "attention": attention}


def _row_button(page, source: str):
    return page.locator(f"[data-testid=edges-incoming] li[data-node-id='{source}'] [data-testid=edge-heads]")


def test_edge_heads_and_a_heads_pairs(page, attention_site, shot) -> None:
    graph, attention = attention_site["graph"], attention_site["attention"]
    page.goto(f"{attention_site['url']}?graph=dallas&clickedId={TARGET}")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    _row_button(page, SOURCE).click()
    panel = page.locator("[data-testid=attention-panel]")
    page.wait_for_selector("[data-testid=attention-panel][data-ready='0.0']", timeout=15_000)

    stored = attention.edge(SOURCE, TARGET)
    edge = float(graph.adjacency[graph.storage_row(graph.node_index(TARGET)), graph.node_index(SOURCE)])
    rows = panel.locator("[data-testid=attention-heads] li")
    assert rows.count() == len(stored["heads"])
    first = rows.nth(0)
    assert first.get_attribute("data-head") == "0.0"
    share = stored["heads"][0]["weight"] / edge
    assert first.locator(".edge-tag").inner_text() == f"{100 * share:.1f}%"
    assert 0.5 < share < 1.0  # L0.H0 carries most of the edge (docs/case-studies.md)
    assert "chosen" in first.get_attribute("class")

    pairs = panel.locator("[data-testid=attention-pairs] li")
    explanation = attention.explanation(0, 0, 8, 7)
    expected = [p for p in explanation.top_pairs(10) if p["value"] or p["weight_effect"]]
    assert pairs.count() == len(expected)
    top = pairs.nth(0)
    assert f"{expected[0]['value']:.3f}" in top.locator(".edge-weight").inner_text()
    assert "is" in top.locator(".attn-term").nth(0).inner_text()
    assert "dallas" in top.locator(".attn-term").nth(1).inner_text()
    assert float(top.locator(".edge-bar span").evaluate("e => parseFloat(e.style.width)")) == 100.0
    shot(page, "attention-panel")

    # another head: its own explanation
    panel.locator("[data-testid=attention-heads] li[data-head='0.3']").click()
    page.wait_for_selector("[data-testid=attention-panel][data-ready='0.3']", timeout=15_000)
    assert "L0.H3" in panel.locator(".attn-title").inner_text()

    # pin the terms' nodes with the existing pinning
    panel.locator("[data-testid=attention-pin]").click()
    pinned = page.evaluate("() => window.__atlas.state.pinned")
    assert {"E_228_8", SOURCE} <= set(pinned)
    page.wait_for_selector("[data-testid=pinned-item]")
    assert panel.locator("[data-testid=attention-pin]").is_disabled()


def test_same_position_edge_says_why_no_heads(page, attention_site) -> None:
    page.goto(f"{attention_site['url']}?graph=dallas&clickedId={TARGET}")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    same = page.evaluate(
        """() => [...document.querySelectorAll("[data-testid=edges-incoming] li")]
              .map(li => li.dataset.nodeId).find(id => id.endsWith('_8'))""")
    assert same is not None
    _row_button(page, same).click()
    note = page.locator("[data-testid=attention-note]")
    assert "same position" in note.inner_text() or "position 8" in note.inner_text()
    assert page.locator("[data-testid=attention-heads]").count() == 0
