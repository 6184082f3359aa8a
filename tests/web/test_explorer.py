"""End-to-end checks of the web app in Chromium: select, pin, group, rename, persist, prune."""

from __future__ import annotations

import json
import time

import httpx
import pytest

pytestmark = pytest.mark.browser


def _open(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=15_000)


def _click_node(page, node_id: str, modifier: str | None = None) -> None:
    pos = page.evaluate("id => window.__atlas.canvas.screenPosition(id)", node_id)
    assert pos is not None, f"{node_id} is not drawn"
    if modifier:
        page.keyboard.down(modifier)
    page.mouse.click(pos["x"], pos["y"])
    if modifier:
        page.keyboard.up(modifier)


def _feature_ids(page, n: int) -> list[str]:
    return page.evaluate(
        """n => window.__atlas.state.doc.nodes
              .filter(x => x.feature_type === 'cross layer transcoder')
              .slice(0, n).map(x => x.node_id)""",
        n,
    )


def _rows(page, direction: str) -> list[str]:
    return page.eval_on_selector_all(
        f"[data-testid=edges-{direction}] li", "els => els.map(e => e.dataset.nodeId)"
    )


def test_click_shows_connections_and_feature_details(page, site, shot) -> None:
    _open(page, f"{site['url']}?graph=demo")
    # no model and no stored explanations here: edges are not clickable, and the status bar is silent
    page.wait_for_function("window.__atlas.attention.statusKnown === true", timeout=15_000)
    assert page.locator("[data-testid=edge-click-help]").is_hidden()
    api_view = httpx.get(f"{site['url']}api/graphs/demo").json()
    assert int(page.get_attribute("body", "data-node-count")) == len(api_view["nodes"])
    # A feature without a bundle label, so the feature panel falls back to the store's.
    node_id = page.evaluate(
        """() => window.__atlas.state.doc.nodes
              .filter(x => x.feature_type === 'cross layer transcoder' && !x.clerp)
              .sort((a, b) => a.influence - b.influence)[0].node_id"""
    )
    _click_node(page, node_id)
    page.wait_for_selector(f"[data-testid=node-id]:text-is('{node_id}')")
    expected = httpx.get(
        f"{site['url']}api/graphs/demo/nodes/{node_id}", params={"limit": 100}
    ).json()
    page.wait_for_selector("[data-testid=edges-outgoing] li")
    for direction in ("outgoing", "incoming"):
        wanted = [r["node_id"] for r in expected[direction]]
        # Long lists show their first ten rows until asked for the rest.
        assert _rows(page, direction) == wanted[:10]
        if len(wanted) > 10:
            page.click(f"[data-testid=more-{direction}]")
            page.wait_for_function(
                f"document.querySelectorAll('[data-testid=edges-{direction}] li').length === {len(wanted)}"
            )
            assert _rows(page, direction) == wanted
    shown_out = _rows(page, "outgoing")
    # Feature panel: examples, promoted tokens without special ones, the density histogram.
    page.wait_for_selector("[data-testid=feature-example]")
    panel = page.inner_text("[data-testid=feature-panel]")
    assert "Austin" in panel and "Dallas" in panel
    assert not any(t in panel for t in ("<pad>", "<eos>", "</s>"))
    assert page.locator("[data-testid=feature-histogram] rect").count() == 32
    here = page.locator("[data-testid=histogram-here]")
    node = next(n for n in api_view["nodes"] if n["node_id"] == node_id)
    assert float(here.get_attribute("x1")) == pytest.approx(320 * node["activation"] / 4.0, abs=0.01)
    layer, index, _pos = (int(x) for x in node_id.split("_"))
    assert f"store label {layer}/{index}" in panel
    assert "clickedId=" in page.url
    # However long the lists above it, the feature panel is one click away.
    page.click("[data-testid=jump-feature]")
    page.wait_for_function(
        """() => {
          const side = document.querySelector('.side').getBoundingClientRect();
          const head = document.querySelector('[data-testid=feature-panel] h2').getBoundingClientRect();
          return head.top >= side.top - 1 && head.bottom <= side.bottom;
        }"""
    )
    # Hover a neighbour: the tooltip names it.
    neighbour = shown_out[0]
    pos = page.evaluate("id => window.__atlas.canvas.screenPosition(id)", neighbour)
    if pos:
        page.mouse.move(pos["x"], pos["y"])
        page.wait_for_selector(".graph-tooltip:not([hidden])")
        assert neighbour in page.inner_text(".graph-tooltip")
    shot(page, "explorer-node-selected")


def test_rows_name_their_position(page, site) -> None:
    """Embedding rows read "Emb “token” @pos"; a labelled feature's row adds its layer and position."""
    _open(page, f"{site['url']}?graph=demo")
    view = httpx.get(f"{site['url']}api/graphs/demo").json()
    tokens = view["metadata"]["prompt_tokens"]
    by_id = {n["node_id"]: n for n in view["nodes"]}
    # A feature fed by embeddings at two different positions, so the rows must tell them apart.
    sources: dict[str, set[str]] = {}
    for link in view["links"]:
        if by_id.get(link["source"], {}).get("feature_type") == "embedding":
            sources.setdefault(link["target"], set()).add(link["source"])
    target = max(sources, key=lambda t: len(sources[t]))
    page.evaluate("id => window.__atlas.selectNode(id)", target)
    page.wait_for_selector(f"[data-testid=node-id]:text-is('{target}')")
    page.wait_for_selector("[data-testid=edges-incoming] li")
    if page.locator("[data-testid=more-incoming]").count():
        page.click("[data-testid=more-incoming]")
    rows = page.eval_on_selector_all(
        "[data-testid=edges-incoming] li",
        "els => els.map(e => ({id: e.dataset.nodeId, label: e.querySelector('.edge-label').textContent,"
        " tag: e.querySelector('.edge-tag').textContent}))",
    )
    embedding_rows = [r for r in rows if r["id"] in sources[target]]
    assert len(embedding_rows) == len(sources[target]) >= 1
    for row in embedding_rows:
        pos = by_id[row["id"]]["ctx_idx"]
        shown = tokens[pos].replace("\n", "⏎").replace("\t", "→").replace("\r", "↵")
        assert row["label"] == f"Emb “{shown}” @{pos}" and row["tag"] == ""
    labelled = [r for r in rows if by_id.get(r["id"], {}).get("clerp") and by_id[r["id"]]["feature_type"] != "embedding"]
    for row in labelled:
        node = by_id[row["id"]]
        assert row["label"] == node["clerp"] and row["tag"] == f"L{node['layer']} @{node['ctx_idx']}"


def test_labels_appear_wherever_a_node_is_named(page, site, shot) -> None:
    """Bundle labels in tooltips, edge rows, the subgraph, the Steer panel, search; the user's label wins."""
    _open(page, f"{site['url']}?graph=demo")
    view = httpx.get(f"{site['url']}api/graphs/demo").json()
    labelled = {n["node_id"]: n["clerp"] for n in view["nodes"] if n["clerp"] and n["feature_type"] == "cross layer transcoder"}
    assert labelled, "the bundle's labels reach the view"
    for node_id, text in labelled.items():
        layer, index, _ = (int(x) for x in node_id.split("_"))
        assert text == site["labels"][(layer, index)]
    source, target = next(
        (link["source"], link["target"]) for link in view["links"]
        if link["source"] in labelled and link["target"] in {n["node_id"] for n in view["nodes"]}
    )
    text = labelled[source]
    pos = page.evaluate("id => window.__atlas.canvas.screenPosition(id)", source)
    page.mouse.move(pos["x"], pos["y"])
    page.wait_for_selector(".graph-tooltip:not([hidden])")
    assert text in page.inner_text(".graph-tooltip")
    page.evaluate("id => window.__atlas.selectNode(id)", target)
    page.wait_for_selector(f"[data-testid=node-id]:text-is('{target}')")
    page.wait_for_selector("[data-testid=edges-incoming] li")
    if page.locator("[data-testid=more-incoming]").count():
        page.click("[data-testid=more-incoming]")
    page.wait_for_selector(f"[data-testid=edges-incoming] li[data-node-id='{source}']")
    assert page.inner_text(f"[data-testid=edges-incoming] li[data-node-id='{source}'] .edge-label") == text
    page.evaluate("id => window.__atlas.setPinned([id])", source)
    box_title = page.locator(f"[data-item-id='{source}'] > title")
    box_title.wait_for(state="attached")
    assert text in box_title.text_content()
    steer_title = page.locator(f"[data-testid=steer-row][data-item-id='{source}'] .steer-title")
    page.click("[data-testid=steer-open]")  # the drawer covers the side panel while open
    steer_title.wait_for()
    assert steer_title.text_content() == text
    page.click("[data-testid=steer-close]")
    page.fill("[data-testid=search]", text)
    page.wait_for_function("id => window.__atlas.state.matches.includes(id)", arg=source)
    # The user's label wins everywhere.
    page.evaluate("id => window.__atlas.selectNode(id)", source)
    page.wait_for_selector(f"[data-testid=node-id]:text-is('{source}')")
    page.wait_for_function(
        "text => document.querySelector('[data-testid=label-input]').value === text", arg=text
    )
    page.fill("[data-testid=label-input]", "my own name")
    page.click("[data-testid=label-save]")
    page.wait_for_function(
        "id => window.__atlas.state.annotations.node_labels[id] === 'my own name'", arg=source
    )
    page.wait_for_function(
        "id => document.querySelector(`[data-item-id='${id}'] > title`).textContent.includes('my own name')",
        arg=source,
    )
    page.mouse.move(pos["x"], pos["y"] + 30)
    page.mouse.move(pos["x"], pos["y"])
    page.wait_for_function("document.querySelector('.graph-tooltip').textContent.includes('my own name')")
    page.click("[data-testid=steer-open]")
    steer_title.wait_for()
    assert steer_title.text_content() == "my own name"
    page.click("[data-testid=steer-close]")
    shot(page, "explorer-labels")
    page.evaluate("id => window.__atlas.saveLabel(window.__atlas.canvas.byId.get(id), '', 'node')", source)
    page.evaluate("window.__atlas.setPinned([])")


def test_graph_browser_lists_sorts_filters_and_links(page, site, shot) -> None:
    listing = httpx.get(f"{site['url']}api/graphs").json()["graphs"]
    _open(page, site["url"])
    assert page.get_attribute("body", "data-mode") == "browser"
    rows = lambda: page.eval_on_selector_all("[data-testid=graph-row]", "els => els.map(e => e.dataset.graphId)")  # noqa: E731
    assert sorted(rows()) == sorted(g["id"] for g in listing)
    # The UI never shows a filesystem path (the data folder's path, or any other).
    content = page.inner_text("body")
    assert str(site["data"]) not in content and "/tmp" not in content
    by_nodes = sorted(listing, key=lambda g: (-g["n_nodes"], g["id"]))
    page.click("[data-testid=sort-n_nodes]")
    page.wait_for_function("document.querySelector('[data-testid=sort-n_nodes]').textContent.includes('↓')")
    assert rows() == [g["id"] for g in by_nodes]
    page.click("[data-testid=sort-n_nodes]")
    assert rows() == [g["id"] for g in sorted(listing, key=lambda g: (g["n_nodes"], g["id"]))]
    page.fill("[data-testid=graph-filter]", "long")
    page.wait_for_function("document.querySelectorAll('[data-testid=graph-row]').length === 3")
    assert sorted(rows()) == ["long-1024", "long-256", "long-64"]
    assert "q=long" in page.url and "sort=n_nodes" in page.url
    shot(page, "explorer-graph-browser")
    page.fill("[data-testid=graph-filter]", "")
    page.click("[data-graph-id='demo'] [data-testid=graph-link]")
    page.wait_for_selector("body[data-mode='graph'][data-ready='1']")
    assert page.input_value("[data-testid=graph-select]") == "demo"


def test_unknown_graph_says_so_and_never_falls_back(page, site, shot) -> None:
    response = httpx.get(f"{site['url']}api/graphs/no-such-graph")
    assert response.status_code == 404
    _open(page, f"{site['url']}?graph=no-such-graph")
    notice = page.inner_text("[data-testid=browser-notice]")
    assert "no-such-graph" in notice and "no graph" in notice.lower()
    assert page.get_attribute("body", "data-mode") == "browser"
    assert page.evaluate("window.__atlas.state.graphId") is None
    assert page.evaluate("window.__atlas.state.doc") is None
    assert "no-such-graph" in page.url
    assert page.locator("[data-testid=graph-row]").count() >= 1
    shot(page, "explorer-unknown-graph")


def test_pin_group_rename_and_reload(page, site, shot) -> None:
    _open(page, f"{site['url']}?graph=demo")
    first, second = _feature_ids(page, 2)
    _click_node(page, first, "Control")
    _click_node(page, second, "Control")
    page.wait_for_function("document.querySelectorAll('[data-testid=pinned-item]').length === 2")
    assert f"pinnedIds={first}%2C{second}" in page.url or f"pinnedIds={first},{second}" in page.url
    for item in (first, second):
        page.click(f"[data-item-id='{item}']", modifiers=["Shift"])
    page.click("[data-testid=group-button]")
    name = page.locator("[data-testid=supernode-name]")
    name.wait_for()
    name.fill("Texas capital")
    # A redraw landing mid-edit (a save's response, a pin change) must keep what was typed.
    page.evaluate("window.__atlas.redraw()")
    name.press("Enter")
    page.wait_for_function(
        "() => document.querySelector('[data-testid=supernode-item] text').textContent.includes('Texas capital')"
    )
    # The server has it, atomically written to the graph's annotations file.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        saved = httpx.get(f"{site['url']}api/graphs/demo/annotations").json()["supernodes"]
        if any(s["name"] == "Texas capital" for s in saved.values()):
            break
        time.sleep(0.1)
    groups = [s for s in saved.values() if s["name"] == "Texas capital"]
    assert len(groups) == 1 and sorted(groups[0]["members"]) == sorted([first, second])
    on_disk = json.loads((site["data"] / "demo" / "demo.annotations.json").read_text())
    assert any(s["name"] == "Texas capital" for s in on_disk["supernodes"].values())

    # Label a node through the panel.
    _click_node(page, first)
    page.fill("[data-testid=label-input]", "says Austin")
    page.click("[data-testid=label-save]")
    page.wait_for_function(
        "id => window.__atlas.state.annotations.node_labels[id] === 'says Austin'", arg=first
    )
    shot(page, "explorer-supernode")

    # Reload the same URL: pins, supernode, clicked node and label come back.
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    page.wait_for_selector("[data-testid=supernode-name]")
    assert page.input_value("[data-testid=supernode-name]") == "Texas capital"
    assert page.input_value("[data-testid=label-input]") == "says Austin"
    assert page.inner_text("[data-testid=node-id]") == first
    # A fresh visit without view parameters still finds the saved annotation.
    _open(page, f"{site['url']}?graph=demo")
    page.wait_for_selector("[data-testid=supernode-name]")
    assert page.input_value("[data-testid=supernode-name]") == "Texas capital"
    shot(page, "explorer-after-reload")

    # Ungroup removes it on the server too.
    page.click("[data-testid=ungroup]")
    page.wait_for_function("() => !document.querySelector('[data-testid=supernode-name]')")
    deadline = time.monotonic() + 10
    while httpx.get(f"{site['url']}api/graphs/demo/annotations").json()["supernodes"]:
        assert time.monotonic() < deadline, "ungroup was not saved"
        time.sleep(0.1)


def test_threshold_slider_prunes(page, site, shot) -> None:
    _open(page, f"{site['url']}?graph=demo")
    before = int(page.get_attribute("body", "data-node-count"))
    # Pin the least influential feature: the tighter threshold prunes it from the view.
    weakest = page.evaluate(
        """() => window.__atlas.state.doc.nodes
              .filter(n => n.feature_type === 'cross layer transcoder')
              .sort((a, b) => b.influence - a.influence)[0].node_id"""
    )
    _click_node(page, weakest, "Control")
    page.locator("[data-testid=node-threshold]").fill("0.3")
    page.wait_for_function(f"Number(document.body.dataset.nodeCount) < {before}")
    after = int(page.get_attribute("body", "data-node-count"))
    api = httpx.get(
        f"{site['url']}api/graphs/demo", params={"node_threshold": 0.3, "edge_threshold": 0.98}
    ).json()
    assert after == len(api["nodes"])
    assert "pruningThreshold=0.3" in page.url
    # The pinned node left the view but keeps its place, and its unpruned edges, in the pane.
    assert page.evaluate("id => window.__atlas.canvas.screenPosition(id)", weakest) is None
    page.click(f"[data-item-id='{weakest}']")
    page.wait_for_selector(f"[data-testid=node-id]:text-is('{weakest}')")
    page.wait_for_selector("[data-testid=edges-outgoing] li")
    shot(page, "explorer-pruned")
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    assert page.input_value("[data-testid=node-threshold]") == "0.3"
    assert int(page.get_attribute("body", "data-node-count")) == after


def test_search_and_json_only_graph(page, site, shot) -> None:
    _open(page, f"{site['url']}?graph=jsonly")
    assert page.is_disabled("[data-testid=edge-threshold]")
    # The file's saved view (qParams in string form) is adopted when the URL has none.
    page.wait_for_selector("[data-testid=supernode-item]")
    assert page.input_value("[data-testid=supernode-name]") == "saved group"
    assert len(page.evaluate("window.__atlas.state.pinned")) == 2
    page.wait_for_function(
        "document.querySelector('[data-testid=scores]').textContent.includes('native graph')"
    )
    page.fill("[data-testid=search]", "E_")
    page.wait_for_function("window.__atlas.state.matches.length > 0")
    matches = page.evaluate("window.__atlas.state.matches")
    assert matches and all(m.startswith("E_") for m in matches)
    page.press("[data-testid=search]", "Enter")
    page.wait_for_selector(f"[data-testid=node-id]:text-is('{matches[0]}')")


def test_stays_responsive_with_thousands_of_edges(page, site, shot) -> None:
    """Thousands of edges are painted in slices across frames, hover and clicks repaint only the
    overlay (timings are printed; benchmarks/explorer.py measures them properly)."""
    start = time.monotonic()
    _open(page, f"{site['url']}?graph=dense&pruningThreshold=1")
    page.wait_for_function("window.__atlas.canvas.stats.drawnMs !== null")
    load_s = time.monotonic() - start
    n_links = int(page.get_attribute("body", "data-link-count"))
    assert n_links > 5000
    timing = page.evaluate(
        """() => {
          const c = window.__atlas.canvas;
          // getImageData forces the canvas to rasterise, so the timing includes the drawing.
          const flush = (cv) => cv.getContext("2d").getImageData(0, 0, 1, 1);
          const painted = c._drawnView;
          const ids = [...c.byId.keys()].slice(0, 20);
          let t = performance.now();
          for (const id of ids) { c.hovered = id; c._drawOverlay(); flush(c.overlay); }
          const hover = (performance.now() - t) / ids.length;
          c.hovered = null;
          t = performance.now();
          for (const id of ids) { c.setDecorations({clicked: id, pinned: new Set(ids)}); flush(c.overlay); }
          const click = (performance.now() - t) / ids.length;
          c.setDecorations({clicked: null, pinned: new Set()});
          return {hover, click, untouched: c._drawnView === painted && c._job === null, stats: c.stats};
        }"""
    )
    print(f"{n_links} edges: page load {load_s:.2f} s, first draw {timing['stats']['firstDrawMs']:.0f} ms, "
          f"all drawn {timing['stats']['drawnMs']:.0f} ms in {timing['stats']['slices']} slices, "
          f"hover redraw {timing['hover']:.2f} ms, click/pin redraw {timing['click']:.2f} ms")
    assert timing["untouched"], "hovering and clicking must not repaint the base"
    assert timing["stats"]["slices"] >= 1
    shot(page, "explorer-dense")
