"""The attention panel in Chromium, on the demo model's two-hop graph with its stored attention
explanations: the city -> region-feature edge's heads with their shares, a head's query-side x
key-side pairs, pinning their nodes, and the note on a same-position edge. The numbers on screen
are checked against the graph's own edge weight and the stored explanations.

Also the panel opened from the graph canvas (clicking a drawn edge, at a point found here from
the nodes' screen positions, never from the canvas's own hit-test) and kept in the URL."""

from __future__ import annotations

import math
from urllib.parse import parse_qs, urlsplit

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
    same = page.wait_for_function(  # the node panel's rows come after the graph is ready
        """() => [...document.querySelectorAll("[data-testid=edges-incoming] li")]
              .map(li => li.dataset.nodeId).find(id => id.endsWith('_8')) || null""",
        timeout=15_000).json_value()
    assert same is not None
    _row_button(page, same).click()
    note = page.locator("[data-testid=attention-note]")
    assert "same position" in note.inner_text() or "position 8" in note.inner_text()
    assert page.locator("[data-testid=attention-heads]").count() == 0


# -- the panel from the graph canvas and in the URL -------------------------------------------

EXPLAINABLE_SOURCES = {"feature", "error", "embedding"}
EXPLAINABLE_TARGETS = {"feature", "logit"}


def _kind(node: dict) -> str:
    kind = node["feature_type"]
    if kind in ("embedding", "logit"):
        return kind
    return "error" if "error" in kind else "feature"


def _segment_distance(p, a, b) -> float:
    (px, py), (ax, ay), (bx, by) = p, a, b
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    t = 0.0 if length2 == 0 else min(1.0, max(0.0, ((px - ax) * dx + (py - ay) * dy) / length2))
    return math.hypot(ax + t * dx - px, ay + t * dy - py)


def _open_graph(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    page.wait_for_function("window.__atlas.attention.statusKnown === true", timeout=15_000)


def _explainable_edges(page, attention) -> set[tuple[str, str]]:
    """The drawn edges the panel can explain without the model: the stored ones and those whose
    ends share a position (the rules of the docs, computed here from the graph JSON)."""
    doc = page.evaluate("() => ({nodes: window.__atlas.state.doc.nodes, links: window.__atlas.canvas.links})")
    nodes = {n["node_id"]: n for n in doc["nodes"]}
    stored = {(e["source"], e["target"]) for e in attention.edges}
    out = set()
    for link in doc["links"]:
        a, b = nodes[link["source"]], nodes[link["target"]]
        if _kind(a) not in EXPLAINABLE_SOURCES or _kind(b) not in EXPLAINABLE_TARGETS:
            continue
        if (a["node_id"], b["node_id"]) in stored or a["ctx_idx"] == b["ctx_idx"]:
            out.add((a["node_id"], b["node_id"]))
    return out


def _point_on_edge(page, source: str, target: str, avoid: set[tuple[str, str]]) -> tuple[float, float]:
    """A point on the drawn segment source -> target (client coordinates) that is inside the plot,
    well away from every node and more than 8 px from every edge in `avoid`."""
    points = {p["id"]: (p["x"], p["y"]) for p in page.evaluate("window.__atlas.canvas.screenPositions()")}
    plot = page.evaluate("window.__atlas.canvas.viewState().plot")
    a, b = points[source], points[target]
    others = [(points[s], points[t]) for s, t in avoid if (s, t) != (source, target) and s in points and t in points]
    for step in range(5, 96):
        t = step / 100
        p = (a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]))
        if not (plot["left"] + 4 < p[0] < plot["right"] - 4 and plot["top"] + 4 < p[1] < plot["bottom"] - 4):
            continue
        if min(math.dist(p, q) for q in points.values()) < 16:
            continue
        if all(_segment_distance(p, u, v) > 8 for u, v in others):
            return p
    raise AssertionError(f"no clear point on the edge {source} -> {target}")


def _overlay_alpha(page, x: float, y: float) -> int:
    """The opacity of the overlay canvas (where highlights are drawn) at client point (x, y)."""
    return page.evaluate(
        """([x, y]) => {
            const overlay = window.__atlas.canvas.overlay;
            const box = overlay.getBoundingClientRect();
            const sx = overlay.width / box.width, sy = overlay.height / box.height;
            const px = overlay.getContext("2d").getImageData(Math.round((x - box.left) * sx),
                                                             Math.round((y - box.top) * sy), 1, 1);
            return px.data[3];
        }""",
        [x, y],
    )


def _attention_params(page) -> dict[str, list[str]]:
    query = parse_qs(urlsplit(page.url).query)
    return {k: v for k, v in query.items() if k.startswith("attention")}


def test_clicking_a_drawn_edge_opens_its_heads_and_the_url_keeps_them(page, attention_site, shot) -> None:
    attention = attention_site["attention"]
    _open_graph(page, f"{attention_site['url']}?graph=dallas")
    explainable = _explainable_edges(page, attention)
    assert (SOURCE, TARGET) in explainable
    x, y = _point_on_edge(page, SOURCE, TARGET, explainable)
    panel = page.locator("[data-testid=attention-panel]")
    assert panel.is_hidden()
    # the edge index is built in idle frames once the graph is painted, before any hover
    page.wait_for_function("window.__atlas.canvas._edgeIndex && window.__atlas.canvas._edgeIndex.ready")

    # hovering: a pointer, the edge highlighted, and a tooltip naming both ends and the weight
    page.mouse.move(x, y)
    tooltip = page.locator("[data-testid=graph-tooltip]")
    tooltip.wait_for(state="visible")
    weight = next(l["weight"] for l in page.evaluate("window.__atlas.canvas.links")
                  if (l["source"], l["target"]) == (SOURCE, TARGET))
    text = tooltip.inner_text()
    assert f"{SOURCE} → {TARGET}" in text and f"{weight:.3f}" in text and "heads" in text
    assert page.evaluate("getComputedStyle(window.__atlas.canvas.overlay).cursor") == "pointer"
    assert page.locator("[data-testid=edge-click-help]").is_visible()  # the status bar says so
    shot(page, "attention-edge-hover")

    page.mouse.click(x, y)
    page.wait_for_selector("[data-testid=attention-panel][data-ready='0.0']", timeout=15_000)
    stored = attention.edge(SOURCE, TARGET)
    assert panel.locator("[data-testid=attention-heads] li").count() == len(stored["heads"])
    assert page.evaluate("window.__atlas.state.clickedId") is None  # an edge click selects no node
    assert _attention_params(page) == {
        "attentionSource": [SOURCE], "attentionTarget": [TARGET], "attentionHead": ["0.0"]}

    # another head, then a reload: the same edge and head again
    panel.locator("[data-testid=attention-heads] li[data-head='0.3']").click()
    page.wait_for_selector("[data-testid=attention-panel][data-ready='0.3']", timeout=15_000)
    assert _attention_params(page)["attentionHead"] == ["0.3"]
    page.reload()
    page.wait_for_selector("[data-testid=attention-panel][data-ready='0.3']", timeout=30_000)
    assert "chosen" in panel.locator("li[data-head='0.3']").get_attribute("class")
    assert page.evaluate("[window.__atlas.attention.edge.source, window.__atlas.attention.edge.target]") == [SOURCE, TARGET]

    # while the panel is open its edge stays marked on the graph (the pointer elsewhere)
    page.mouse.move(5, 5)
    assert _overlay_alpha(page, x, y) > 0

    # closing forgets it
    panel.locator("[data-testid=attention-close]").click()
    assert panel.is_hidden()
    assert _attention_params(page) == {}
    assert _overlay_alpha(page, x, y) == 0

    # nodes keep priority over the edges that meet them: clicking the target selects it
    target = page.evaluate(f"window.__atlas.canvas.screenPosition('{TARGET}')")
    page.mouse.click(target["x"], target["y"])
    page.wait_for_function(f"window.__atlas.state.clickedId === '{TARGET}'")
    assert panel.is_hidden()

    # with the target selected its edges are drawn over a veil, and clicking one still works
    x, y = _point_on_edge(page, SOURCE, TARGET, explainable)
    page.mouse.click(x, y)
    page.wait_for_selector("[data-testid=attention-panel][data-ready='0.0']", timeout=15_000)
    assert page.evaluate("window.__atlas.state.clickedId") == TARGET


def test_edges_the_panel_cannot_explain_are_not_clickable(page, attention_site) -> None:
    _open_graph(page, f"{attention_site['url']}?graph=dallas")
    explainable = _explainable_edges(page, attention_site["attention"])
    links = page.evaluate("window.__atlas.canvas.links")
    points = {p["id"] for p in page.evaluate("window.__atlas.canvas.screenPositions()")}
    everything = {(l["source"], l["target"]) for l in links}
    chosen = None
    for link in sorted(links, key=lambda l: -abs(l["weight"])):
        pair = (link["source"], link["target"])
        if pair in explainable or not set(pair) <= points:
            continue
        try:
            chosen = _point_on_edge(page, *pair, everything)  # clear of every other edge
        except AssertionError:
            continue
        break
    assert chosen is not None
    page.mouse.move(*chosen)
    assert page.evaluate("getComputedStyle(window.__atlas.canvas.overlay).cursor") != "pointer"
    assert page.locator("[data-testid=graph-tooltip]").is_hidden()
    page.mouse.click(*chosen)
    page.wait_for_timeout(300)
    assert page.locator("[data-testid=attention-panel]").is_hidden()


@pytest.mark.parametrize(
    "query",
    [
        "attentionSource=nope&attentionTarget=also-nope&attentionHead=0.0",
        f"attentionSource={TARGET}&attentionTarget={SOURCE}",  # reversed: an embedding is no target
        f"attentionSource={SOURCE}&attentionTarget=0_0_0&attentionHead=7.7",
        f"attentionSource=%3Cscript%3E&attentionTarget={TARGET}&attentionHead=%3Cb%3E",
        f"attentionTarget={TARGET}",
    ],
)
def test_url_with_bogus_attention_state_opens_the_graph_quietly(page, attention_site, query) -> None:
    _open_graph(page, f"{attention_site['url']}?graph=dallas&clickedId={TARGET}&{query}")
    page.wait_for_selector("[data-testid=edges-incoming] li")  # the graph and its node panel work
    page.wait_for_timeout(300)
    assert page.locator("[data-testid=attention-panel]").is_hidden()
    assert _attention_params(page) == {}  # dropped from the URL
    assert page.evaluate("window.__atlas.state.clickedId") == TARGET


def test_url_head_that_is_not_one_of_the_edges_falls_back_to_the_strongest(page, attention_site) -> None:
    _open_graph(page, f"{attention_site['url']}?graph=dallas&attentionSource={SOURCE}"
                      f"&attentionTarget={TARGET}&attentionHead=9.9")
    page.wait_for_selector("[data-testid=attention-panel][data-ready='0.0']", timeout=15_000)
    assert _attention_params(page)["attentionHead"] == ["0.0"]


def test_edge_index_finds_every_edge_near_a_point(page, attention_site) -> None:
    """edge-hits.js against brute force: random worlds (wide ones force the grid to coarsen),
    every segment within r of a query point must be among the index's candidates, whether the
    index was built in one go or in part first."""
    _open_graph(page, f"{attention_site['url']}?graph=dallas")
    result = page.evaluate(
        """async () => {
          const { EdgeIndex, segmentDistance2 } = await import('/static/js/edge-hits.js');
          let seed = 5;
          const rand = () => (seed = (seed * 16807) % 2147483647) / 2147483647;
          let near = 0, missed = 0, coarse = 0;
          for (let c = 0; c < 12; c++) {
            const n = 3 + Math.floor(rand() * 2000), m = Math.floor(rand() * (c % 3 ? 4000 : 40000));
            const W = 200 + rand() * 40000, H = 150 + rand() * 800;
            const wx = new Float64Array(n), wy = new Float64Array(n);
            for (let i = 0; i < n; i++) { wx[i] = rand() < 0.05 ? NaN : rand() * W; wy[i] = rand() * H; }
            const s = new Int32Array(m), t = new Int32Array(m);
            for (let j = 0; j < m; j++) { s[j] = Math.floor(rand() * n); t[j] = Math.floor(rand() * n); }
            const index = new EdgeIndex(wx, wy, s, t);
            if (c % 2) index.build(0);  // built in part, as between two idle frames: near() finishes it
            if (index.cellW > 24 * 1.01 && index.cellW > W / 256 * 1.01) coarse++;
            for (let q = 0; q < 60; q++) {
              const px = rand() * W, py = rand() * H, r = 0.5 + rand() * 40;
              const got = new Set();
              index.near(px - r, py - r, px + r, py + r, (j) => got.add(j));
              for (let j = 0; j < m; j++) {
                if (wx[s[j]] !== wx[s[j]] || wx[t[j]] !== wx[t[j]]) continue;
                if (segmentDistance2(px, py, wx[s[j]], wy[s[j]], wx[t[j]], wy[t[j]]) <= r * r) {
                  near++;
                  if (!got.has(j)) missed++;
                }
              }
            }
          }
          return { near, missed, coarse, d: segmentDistance2(3, 4, 0, 0, 0, 0), e: segmentDistance2(1, 5, 0, 0, 2, 0) };
        }"""
    )
    assert result["near"] > 10_000 and result["missed"] == 0
    assert result["coarse"] >= 1  # the budget's coarsening was exercised
    assert result["d"] == 25 and result["e"] == 25




def test_url_reopens_a_stored_edge_whose_end_is_pruned_from_the_view(page, attention_site) -> None:
    """A stored edge is known to exist, so the URL reopens it even when its target is not in the
    view (pruned; its heads come from the stored files)."""
    source, target = "E_127_7", "0_557_8"
    stored = attention_site["attention"].edge(source, target)
    assert stored is not None
    heads = [f"{h['layer']}.{h['head']}" for h in stored["heads"] if h.get("explanation") is not None]
    head = heads[-1]
    _open_graph(page, f"{attention_site['url']}?graph=dallas&pruningThreshold=0.6&attentionSource={source}"
                      f"&attentionTarget={target}&attentionHead={head}")
    assert page.evaluate(f"window.__atlas.canvas.byId.has('{target}')") is False
    page.wait_for_selector(f"[data-testid=attention-panel][data-ready='{head}']", timeout=15_000)
    assert page.locator("[data-testid=attention-heads] li").count() == len(stored["heads"])
    assert _attention_params(page)["attentionHead"] == [head]
