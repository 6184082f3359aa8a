"""The explorer's layout in Chromium: the link graph fits its pane, zoom / pan / fit keep hit-testing
right, long prompts stay readable (no two axis labels overlap, no node box overlaps another, the
most probable logit is labelled with its probability), the subgraph pane lays out without overlaps
and resizes, and no panel cuts its text at common window sizes.

Positions are checked against the geometry the page reports (client rectangles, label corners)
and against the zoom's defining property (the point under the cursor stays put), not against
stored numbers.
"""

from __future__ import annotations

import math

import pytest

from .conftest import LONG_PROMPTS

pytestmark = pytest.mark.browser

DENSE = "?graph=dense&pruningThreshold=1"
HIT_RADIUS = 9  # graph-canvas.js: a click within this many pixels of a node hits it


def _open(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=15_000)


def _settle(page) -> dict:
    """Wait until the base layer has been repainted for the current view; return the view."""
    page.wait_for_function("!window.__atlas.canvas.viewState().pending")
    return page.evaluate("window.__atlas.canvas.viewState()")


def _positions(page) -> list[dict]:
    return page.evaluate("window.__atlas.canvas.screenPositions()")


def _assert_all_inside(page) -> list[dict]:
    """Every node of the graph is drawn inside the canvas and inside the visible pane."""
    view = page.evaluate("window.__atlas.canvas.viewState()")
    pane = page.evaluate("(() => { const r = document.querySelector('#graph').getBoundingClientRect(); return {left: r.left, top: r.top, right: r.right, bottom: r.bottom}; })()")
    positions = _positions(page)
    n_nodes = int(page.get_attribute("body", "data-node-count"))
    assert len(positions) == n_nodes
    r = 5  # the largest node glyph's half-size
    for box in (view["canvas"], view["plot"], pane):
        outside = [
            p["id"]
            for p in positions
            if not (box["left"] + r <= p["x"] <= box["right"] - r and box["top"] + r <= p["y"] <= box["bottom"] - r)
        ]
        assert not outside, f"{len(outside)} nodes outside {box}: {outside[:5]}"
    assert all(p["visible"] for p in positions)
    return positions


def _isolated_visible(positions: list[dict], margin: float = 4.0) -> list[dict]:
    """Visible nodes with no other node within the hit radius, so a click hits exactly them."""
    vis = [p for p in positions if p["visible"]]
    out = []
    for p in vis:
        nearest = min(
            (math.hypot(p["x"] - q["x"], p["y"] - q["y"]) for q in vis if q is not p), default=1e9
        )
        if nearest > HIT_RADIUS + margin:
            out.append(p)
    return out


def _overlap(a: dict, b: dict) -> bool:
    return a["x0"] < b["x1"] and b["x0"] < a["x1"] and a["y0"] < b["y1"] and b["y0"] < a["y1"]


def _polygons_overlap(a: list, b: list, eps: float = 1e-6) -> bool:
    """Separating-axis test for two convex polygons (lists of [x, y] corners)."""
    for poly in (a, b):
        for i in range(len(poly)):
            (x0, y0), (x1, y1) = poly[i], poly[(i + 1) % len(poly)]
            nx, ny = y0 - y1, x1 - x0
            pa = [nx * x + ny * y for x, y in a]
            pb = [nx * x + ny * y for x, y in b]
            if max(pa) <= min(pb) + eps or max(pb) <= min(pa) + eps:
                return False
    return True


def _overlapping_boxes(boxes: list[dict]) -> list[tuple[str, str]]:
    """Pairs of node boxes that overlap (sweep along x, so thousands of nodes are quick)."""
    ordered = sorted(boxes, key=lambda b: b["x0"])
    active: list[dict] = []
    bad = []
    for box in ordered:
        active = [a for a in active if a["x1"] > box["x0"]]
        bad += [(a["id"], box["id"]) for a in active if _overlap(a, box)]
        active.append(box)
    return bad


def _check_labels(page) -> dict:
    """Token labels (rotated or not), position numbers and logit labels: inside the canvas,
    whole or cut with an ellipsis, and never overlapping one another."""
    labels = page.evaluate("window.__atlas.canvas.drawnLabels()")
    view = page.evaluate("window.__atlas.canvas.viewState()")
    canvas = view["canvas"]
    for kind in ("tokens", "logits"):
        for box in labels[kind]:
            assert canvas["left"] - 0.5 <= box["x0"] and box["x1"] <= canvas["right"] + 0.5, (kind, box)
            assert canvas["top"] - 0.5 <= box["y0"] and box["y1"] <= canvas["bottom"] + 0.5, (kind, box)
    for box in labels["tokens"]:
        assert box["text"] == box["full"] or (
            box["text"].endswith("…") and box["full"].startswith(box["text"][:-1])
        ), box
    tokens = labels["tokens"]
    for i, a in enumerate(tokens):
        for b in tokens[i + 1 :]:
            assert not _polygons_overlap(a["corners"], b["corners"]), f"token labels overlap: {a} {b}"
    numbers = [t["numberBox"] for t in tokens if t["numberBox"]]
    for i, a in enumerate(numbers):
        for b in numbers[i + 1 :]:
            assert not _overlap(a, b), f"position numbers overlap: {a} {b}"
        for t in tokens:
            assert not _polygons_overlap([[a["x0"], a["y0"]], [a["x1"], a["y0"]], [a["x1"], a["y1"]], [a["x0"], a["y1"]]], t["corners"]), (a, t)
    logits = labels["logits"]
    for i, a in enumerate(logits):
        for b in logits[i + 1 :]:
            assert not _overlap(a, b), f"logit labels overlap: {a} {b}"
    return labels


def _check_top_logit(page, labels: dict) -> None:
    """The most probable logit is labelled, whole, with its probability."""
    top = page.evaluate(
        """() => window.__atlas.state.doc.nodes.filter(n => n.feature_type === 'logit')
              .sort((a, b) => b.token_prob - a.token_prob)[0]"""
    )
    drawn = [lbl for lbl in labels["logits"] if lbl["id"] == top["node_id"]]
    assert drawn, "the most probable logit has no label"
    pct = 100 * top["token_prob"]
    assert drawn[0]["top"] and drawn[0]["text"].endswith("%")
    shown = float(drawn[0]["text"].rsplit(" ", 1)[1].rstrip("%").lstrip("<"))
    assert shown == pytest.approx(pct, abs=0.51 if pct >= 10 else 0.051)


def test_dense_graph_fits_zooms_pans_and_fits_again(page, site, shot) -> None:
    _open(page, f"{site['url']}{DENSE}")
    page.click("[data-testid=graph-fit]")
    _settle(page)
    fitted = _assert_all_inside(page)
    # The whole prompt is labelled, long tokens cut with an ellipsis; logit labels apart.
    labels = _check_labels(page)
    tokens = sorted(labels["tokens"], key=lambda t: t["pos"])
    assert [t["pos"] for t in tokens] == list(range(10))
    long_label = tokens[2]
    assert long_label["full"] == site["long_tokens"][2] and long_label["text"].endswith("…")
    assert any(site["long_logit"] in lbl["full"] for lbl in labels["logits"])
    assert len(labels["logits"]) == 5
    _check_top_logit(page, labels)
    # Hovering a cut token label shows the whole token.
    cx = sum(c[0] for c in long_label["corners"]) / 4
    cy = sum(c[1] for c in long_label["corners"]) / 4
    page.mouse.move(cx, cy)
    page.wait_for_selector("[data-testid=graph-tooltip]:not([hidden])")
    assert site["long_tokens"][2].strip() in page.inner_text("[data-testid=graph-tooltip]")
    shot(page, "explorer-dense-fit")

    # Wheel-zoom around a point in the middle of the plot: that point stays where it is, so
    # every node moves away from it by the zoom factors (kx on x, ky on y).
    view = page.evaluate("window.__atlas.canvas.viewState()")
    cx = (view["plot"]["left"] + view["plot"]["right"]) / 2
    cy = (view["plot"]["top"] + view["plot"]["bottom"]) / 2
    page.mouse.move(cx, cy)
    for _ in range(3):
        page.mouse.wheel(0, -300)
    page.wait_for_function("vk => window.__atlas.canvas.viewState().k > 2 * vk", arg=view["k"])
    view = _settle(page)
    zoom = page.evaluate("[window.__atlas.canvas.view.kx, window.__atlas.canvas.view.ky]")
    fit_k = page.evaluate("window.__atlas.canvas.view.kMin")
    kx, ky = zoom[0] / fit_k, zoom[1] / max(1, fit_k) ** 0.5
    assert zoom[0] == pytest.approx(view["k"]) and 1 < zoom[1] < zoom[0]
    zoomed = {p["id"]: p for p in _positions(page)}
    for p in fitted:
        q = zoomed[p["id"]]
        assert q["x"] == pytest.approx(cx + (p["x"] - cx) * kx, abs=0.6)
        assert q["y"] == pytest.approx(cy + (p["y"] - cy) * ky, abs=0.6)
    visible = [p for p in zoomed.values() if p["visible"]]
    assert 0 < len(visible) < len(fitted)

    # Hover, click, ctrl-click still hit the node under the pointer in the zoomed view (nodes
    # away from the plot's edges: selecting one there would pan it into view).
    plot = view["plot"]
    inner = [p for p in _isolated_visible(list(zoomed.values()))
             if plot["left"] + 30 < p["x"] < plot["right"] - 30 and plot["top"] + 30 < p["y"] < plot["bottom"] - 30]
    target, other = inner[:2]
    page.mouse.move(target["x"], target["y"])
    page.wait_for_selector("[data-testid=graph-tooltip]:not([hidden])")
    assert target["id"] in page.inner_text("[data-testid=graph-tooltip]")
    page.mouse.click(target["x"] + 3, target["y"] - 2)
    page.wait_for_selector(f"[data-testid=node-id]:text-is('{target['id']}')")
    page.keyboard.down("Control")
    page.mouse.click(other["x"], other["y"])
    page.keyboard.up("Control")
    page.wait_for_selector(f"[data-testid=pinned-item][data-item-id='{other['id']}']")
    assert page.evaluate("window.__atlas.state.clickedId") == target["id"]
    shot(page, "explorer-dense-zoomed")

    # Drag to pan: everything moves with the pointer, and the drag is not a click.
    before = {p["id"]: p for p in _positions(page)}
    start = (cx + 40, cy + 30)
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(start[0] - 60, start[1] - 20, steps=4)
    page.mouse.move(start[0] - 120, start[1] - 40, steps=4)
    page.mouse.up()
    panned = page.evaluate("window.__atlas.canvas.viewState()")
    dx, dy = panned["tx"] - view["tx"], panned["ty"] - view["ty"]
    assert (dx, dy) != (0, 0)
    assert -120 <= dx <= 0 and -40 <= dy <= 0  # as far as the pan limits allow
    after = {p["id"]: p for p in _positions(page)}
    for node_id, p in before.items():
        assert after[node_id]["x"] == pytest.approx(p["x"] + dx, abs=0.01)
        assert after[node_id]["y"] == pytest.approx(p["y"] + dy, abs=0.01)
    assert page.evaluate("window.__atlas.state.clickedId") == target["id"]
    _settle(page)
    _check_labels(page)

    # "Fit" brings back the whole graph, exactly as first laid out.
    page.click("[data-testid=graph-fit]")
    view = _settle(page)
    assert view["fit"]
    refitted = {p["id"]: p for p in _assert_all_inside(page)}
    for p in fitted:
        assert refitted[p["id"]]["x"] == pytest.approx(p["x"], abs=1e-6)
        assert refitted[p["id"]]["y"] == pytest.approx(p["y"], abs=1e-6)
    # So does a double-click, after zooming in with the + button.
    page.click("[data-testid=zoom-in]")
    assert not page.evaluate("window.__atlas.canvas.viewState().fit")
    page.mouse.dblclick(view["plot"]["right"] - 20, view["plot"]["bottom"] - 20)
    assert page.evaluate("window.__atlas.canvas.viewState().fit")
    _assert_all_inside(page)


@pytest.mark.parametrize("n_tokens", sorted(LONG_PROMPTS))
def test_long_prompts_stay_readable(page, site, shot, n_tokens) -> None:
    """At 64, 256 and 1024 tokens: nothing overlaps at the home zoom, collapsed runs and angled,
    numbered labels with the full token on hover; the overview (Fit) shows everything."""
    _open(page, f"{site['url']}?graph=long-{n_tokens}")
    view = _settle(page)
    assert view["home"] and view["labelMode"] == "angled"
    boxes = page.evaluate("window.__atlas.canvas.nodeBoxes()")
    assert len(boxes) == int(page.get_attribute("body", "data-node-count"))
    assert not _overlapping_boxes(boxes)[:5]
    labels = _check_labels(page)
    _check_top_logit(page, labels)
    tokens = page.evaluate("window.__atlas.state.doc.metadata.prompt_tokens")
    drawn = [t for t in labels["tokens"] if not t["gap"]]
    assert len(drawn) >= 12  # a readable stretch of the prompt is labelled at once
    for label in drawn:
        assert label["full"] == tokens[label["pos"]].replace("\n", "⏎")
    numbered = [t for t in drawn if t["numberBox"]]
    assert len(numbered) >= len(drawn) // 2
    if n_tokens > 64:
        # The home view shows the end of the prompt; the rest is a pan away.
        assert view["kMin"] < 1 and max(t["pos"] for t in drawn) >= n_tokens - 3
        assert view["collapsed"] > 0 and view["compact"] > 0
    # Hover a label (at its middle, along the text): the tooltip gives the whole token and
    # its position.
    label = max(drawn, key=lambda t: len(t["full"]))
    mx = sum(c[0] for c in label["corners"]) / 4
    my = sum(c[1] for c in label["corners"]) / 4
    page.mouse.move(mx, my)
    page.wait_for_selector("[data-testid=graph-tooltip]:not([hidden])")
    tip = page.inner_text("[data-testid=graph-tooltip]")
    assert label["full"].strip() in tip and f"position {label['pos']}" in tip
    page.mouse.move(5, 5)
    shot(page, f"explorer-long-{n_tokens}")
    # The overview: every node in the pane, labels thinned so they still never overlap.
    page.click("[data-testid=graph-fit]")
    view = _settle(page)
    assert view["fit"]
    assert all(p["visible"] for p in _positions(page))
    labels = _check_labels(page)
    _check_top_logit(page, labels)
    shot(page, f"explorer-long-{n_tokens}-fit")
    if n_tokens == 1024:
        # A collapsed run opens on a click and keeps its place on the screen.
        page.click("[data-testid=graph-home]")
        first = page.evaluate(
            """() => {
              const c = window.__atlas.canvas;
              const gaps = c.layout.columns.filter((col) => col.gap);
              const g = gaps[Math.floor(gaps.length / 2)];
              c.view.centreOn((g.x0 + g.x1) / 2, 0, c._plotCentre().x, c.view.ty);
              c._viewChanged(true);
              return g.first;
            }"""
        )
        view = _settle(page)
        gap = next(t for t in page.evaluate("window.__atlas.canvas.drawnLabels()")["tokens"] if t["pos"] == first)
        assert gap["gap"] and gap["text"].startswith("…")
        before = view["collapsed"]
        left = page.evaluate("window.__atlas.canvas.overlay.getBoundingClientRect().left")
        x = (gap["cx0"] + gap["cx1"]) / 2 + left
        page.mouse.click(x, view["plot"]["bottom"] + 8)  # the numbers' row: no rotated label there
        page.wait_for_function("n => window.__atlas.canvas.viewState().collapsed === n - 1", arg=before)
        opened = page.evaluate("p => window.__atlas.canvas.screenPosition(`E_${1000 + p % 5000}_${p}`)", first)
        assert opened is not None and abs(opened["x"] - x) < 40  # it opened where it was
        assert not _overlapping_boxes(page.evaluate("window.__atlas.canvas.nodeBoxes()"))[:5]


def test_subgraph_lays_out_without_overlaps_shows_weights_and_resizes(page, site, shot) -> None:
    _open(page, f"{site['url']}{DENSE}")
    ids = page.evaluate(
        """() => {
          const nodes = window.__atlas.state.doc.nodes.filter(n => n.feature_type === 'cross layer transcoder');
          const byLayer = new Map();
          for (const n of nodes) { if (!byLayer.has(n.layer)) byLayer.set(n.layer, []); byLayer.get(n.layer).push(n.node_id); }
          return [...byLayer.values()].flatMap(list => list.slice(0, 3));
        }"""
    )
    assert len(ids) >= 12
    page.evaluate("ids => window.__atlas.setPinned(ids)", ids)
    page.wait_for_function("n => document.querySelectorAll('[data-testid=pinned-item]').length === n", arg=len(ids))
    boxes = page.eval_on_selector_all(
        "[data-testid=pinned-item] rect",
        "els => els.map(e => { const r = e.getBoundingClientRect(); return {id: e.parentNode.dataset.itemId, x0: r.left, x1: r.right, y0: r.top, y1: r.bottom}; })",
    )
    assert len(boxes) == len(ids)
    assert not _overlapping_boxes(boxes)
    # Layers are rows: a lower layer never sits above a higher one.
    layer = {i: int(i.split("_")[0]) for i in ids}
    for a in boxes:
        for b in boxes:
            if layer[a["id"]] < layer[b["id"]]:
                assert a["y0"] > b["y0"]
    weights = page.eval_on_selector_all("[data-testid=edge-weight]", "els => els.map(e => e.textContent)")
    assert weights, "edge weights are written on the edges"
    links = page.evaluate("window.__atlas.subgraph.data.links")
    assert set(weights) <= {f"{link['weight']:.2f}" for link in links}
    shot(page, "explorer-subgraph")
    # Drag the pane's top edge up: the pane grows by that much, the graph pane shrinks.
    pane = page.locator("#subgraph").bounding_box()
    graph_h = page.locator("#graph").bounding_box()["height"]
    handle = page.locator("[data-testid=subgraph-resize]").bounding_box()
    grip = handle["y"] + handle["height"] / 2
    page.mouse.move(handle["x"] + 200, grip)
    page.mouse.down()
    page.mouse.move(handle["x"] + 200, grip - 60, steps=3)
    page.mouse.move(handle["x"] + 200, grip - 120, steps=3)
    page.mouse.up()
    grown = page.locator("#subgraph").bounding_box()
    assert grown["height"] == pytest.approx(pane["height"] + 120, abs=2)
    page.wait_for_function("h => document.querySelector('#graph').getBoundingClientRect().height < h - 100", arg=graph_h)
    page.wait_for_function("h => Math.abs(window.__atlas.canvas.layout.height - document.querySelector('#graph').clientHeight) < 1", arg=graph_h)
    # Remembered across visits.
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    assert page.locator("#subgraph").bounding_box()["height"] == pytest.approx(grown["height"], abs=2)
    page.evaluate("localStorage.clear()")


def test_layout_and_label_math(page, site) -> None:
    """layout.js, axis.js, labels.js and view.js as modules: random cases checked against
    brute-force geometry."""
    _open(page, f"{site['url']}?graph=demo")
    result = page.evaluate(
        """async () => {
          const { fitText } = await import('/static/js/labels.js');
          const { computeLayout, NODE_BOX, positionGroups } = await import('/static/js/layout.js');
          const { labelCorners, insideCorners } = await import('/static/js/axis.js');
          const { ViewTransform } = await import('/static/js/view.js');
          const { clipSegment } = await import('/static/js/edges.js');
          let seed = 7;
          const rand = () => (seed = (seed * 16807) % 2147483647) / 2147483647;
          const measure = (t) => 7 * t.length;  // a monospace font, 7 px a character
          // Random graphs of every size: boxes of the laid-out nodes.
          const layouts = [];
          for (let c = 0; c < 40; c++) {
            const nPos = 2 + Math.floor(rand() * 300), nLayers = 1 + Math.floor(rand() * 20);
            const nodes = [];
            for (let p = 0; p < nPos; p++) nodes.push({ node_id: `E_${p}`, feature_type: 'embedding', layer: 'E', ctx_idx: p });
            const nFeat = Math.floor(rand() * 600);
            for (let i = 0; i < nFeat; i++) {
              const p = rand() < 0.5 ? nPos - 1 : Math.floor(rand() * nPos);
              nodes.push({ node_id: `f${i}`, feature_type: rand() < 0.9 ? 'cross layer transcoder' : 'mlp reconstruction error',
                           layer: String(Math.floor(rand() * nLayers)), ctx_idx: p, influence: rand() });
            }
            const nLogits = 1 + Math.floor(rand() * 10);
            for (let i = 0; i < nLogits; i++) nodes.push({ node_id: `L${i}`, feature_type: 'logit', layer: String(nLayers + 1), ctx_idx: nPos - 1, token_prob: rand(), clerp: `Output "tok${'x'.repeat(Math.floor(rand() * 30))}" (p=0.1)` });
            const tokens = Array.from({ length: nPos }, (_, i) => 'w'.repeat(1 + Math.floor(rand() * 25)));
            const links = [];
            for (let i = 0; i < nodes.length; i++) {
              if (rand() < 0.5) links.push({ source: nodes[Math.floor(rand() * nodes.length)].node_id, target: nodes[i].node_id, weight: rand() - 0.3 });
            }
            const width = 500 + rand() * 1000, height = 300 + rand() * 500;
            const L = computeLayout(nodes, links, tokens, width, height, { token: measure, logit: measure });
            const boxes = nodes.map((n) => {
              const p = L.positions.get(n.node_id);
              const kind = L.compact.has(n.node_id) ? 'tick' : n.feature_type === 'embedding' ? 'embedding' : n.feature_type === 'logit' ? 'logit' : n.feature_type.includes('error') ? 'error' : 'feature';
              const [hw, hh] = NODE_BOX[kind];
              return { id: n.node_id, x0: p.x - hw, x1: p.x + hw, y0: p.y - hh, y1: p.y + hh };
            });
            const groups = positionGroups(nodes, links, nPos);
            layouts.push({ boxes, width: L.width, paneWidth: width, plot: L.plot, n: nodes.length, placed: L.positions.size,
                           covered: groups.reduce((a, g) => a + g.last - g.first + 1, 0), nPos,
                           ordered: L.columns.every((col, i) => i === 0 || col.x0 >= L.columns[i - 1].x1 - 1e-9) });
          }
          const corners = [];
          for (let i = 0; i < 200; i++) {
            const ax = rand() * 500, ay = rand() * 300, w = rand() * 120, angle = rand() < 0.5 ? 0 : Math.PI / 4;
            const poly = labelCorners(ax, ay, w, 13, angle);
            const px = ax + (rand() - 0.5) * 200, py = ay + (rand() - 0.5) * 200;
            corners.push({ ax, ay, w, angle, poly, px, py, inside: insideCorners(poly, px, py) });
          }
          const fits = [fitText('internationalization', 70, measure), fitText('short', 70, measure), fitText('abc', 10, measure)];
          const v = new ViewTransform();
          v.setFrame({ x0: 40, y0: 0, x1: 3000, y1: 500 }, { x0: 40, y0: 0, x1: 800, y1: 500 });
          v.home();
          const home = { k: v.k, tx: v.tx, right: v.toScreen(3000, 0).x };
          const zooms = [];
          for (let i = 0; i < 60; i++) {
            const cx = 40 + rand() * 760, cy = rand() * 500, f = 0.3 + rand() * 2.5;
            const wx = (cx - v.tx) / v.kx, wy = (cy - v.ty) / v.ky;
            v.zoomAt(cx, cy, f);
            const s = v.toScreen(wx, wy);
            zooms.push({ k: v.k, kx: v.kx, ky: v.ky, kMin: v.kMin, sx: s.x, sy: s.y, cx, cy, tl: v.toScreen(40, 0), br: v.toScreen(3000, 500) });
          }
          v.fit();
          const fit = { k: v.k, left: v.toScreen(40, 0).x, right: v.toScreen(3000, 0).x };
          const clips = [];
          for (let i = 0; i < 300; i++) {
            const seg = [rand() * 300 - 100, rand() * 300 - 100, rand() * 300 - 100, rand() * 300 - 100];
            clips.push({ seg, clipped: clipSegment(...seg, 0, 10, 100, 90) });
          }
          return { layouts, corners, fits, home, zooms, fit, clips };
        }"""
    )
    for lay in result["layouts"]:
        assert lay["placed"] == lay["n"] and lay["covered"] == lay["nPos"] and lay["ordered"]
        assert lay["width"] >= lay["paneWidth"] - 1e-6
        assert not _overlapping_boxes(lay["boxes"]), "node boxes overlap"
        for box in lay["boxes"]:
            assert lay["plot"]["x0"] - 1e-6 <= box["x0"] and box["x1"] <= lay["plot"]["x1"] + 1e-6
            assert lay["plot"]["y0"] <= box["y0"] and box["y1"] <= lay["plot"]["y1"]
    for c in result["corners"]:
        poly = c["poly"]
        # The text ends at the anchor (flat labels: centred on it) and is w long, 13 high.
        ux, uy = poly[1][0] - poly[0][0], poly[1][1] - poly[0][1]
        assert math.hypot(ux, uy) == pytest.approx(c["w"], abs=1e-6)
        if c["angle"]:
            assert uy == pytest.approx(-ux, abs=1e-6) and ux >= 0  # rising at 45°
            mid_end = ((poly[1][0] + poly[2][0]) / 2, (poly[1][1] + poly[2][1]) / 2)
            assert mid_end == pytest.approx((c["ax"], c["ay"]), abs=1e-6)
        # insideCorners agrees with the half-plane test of a brute-force point-in-polygon.
        inside = all(
            (b[0] - a[0]) * (c["py"] - a[1]) - (b[1] - a[1]) * (c["px"] - a[0]) >= -1e-9
            for a, b in zip(poly, poly[1:] + poly[:1])
        ) or all(
            (b[0] - a[0]) * (c["py"] - a[1]) - (b[1] - a[1]) * (c["px"] - a[0]) <= 1e-9
            for a, b in zip(poly, poly[1:] + poly[:1])
        )
        assert c["inside"] == inside
    assert result["fits"] == ["internati…", "short", ""]
    # Home: zoom 1 at the world's right end; fit: the whole world in the screen's plot.
    assert result["home"]["k"] == 1 and result["home"]["right"] == pytest.approx(800)
    assert result["fit"]["left"] == pytest.approx(40) and result["fit"]["right"] == pytest.approx(800)
    for z in result["zooms"]:
        assert z["kMin"] - 1e-9 <= z["k"] <= 40 and z["kx"] == pytest.approx(z["k"])
        assert z["ky"] == pytest.approx(math.sqrt(max(1, z["k"])))
        # The scaled world always covers the screen's plot: no empty space is ever panned in.
        assert z["tl"]["x"] <= 40 + 1e-6 and z["tl"]["y"] <= 1e-6
        assert z["br"]["x"] >= 800 - 1e-6 and z["br"]["y"] >= 500 - 1e-6
        # Away from the clamp, the point under the cursor stays there.
        if z["tl"]["x"] < 40 - 1e-6 and z["br"]["x"] > 800 + 1e-6:
            assert z["sx"] == pytest.approx(z["cx"], abs=1e-6)
        if z["tl"]["y"] < -1e-6 and z["br"]["y"] > 500 + 1e-6:
            assert z["sy"] == pytest.approx(z["cy"], abs=1e-6)
    # clipSegment keeps exactly the points of a segment inside the rectangle [0,100]×[10,90]:
    # brute force over 400 points along each random segment.
    for clip in result["clips"]:
        ax, ay, bx, by = clip["seg"]
        inside = [
            t / 399
            for t in range(400)
            if 0 <= ax + (bx - ax) * t / 399 <= 100 and 10 <= ay + (by - ay) * t / 399 <= 90
        ]
        if clip["clipped"] is None:
            assert not inside, clip
            continue
        cx0, cy0, cx1, cy1 = clip["clipped"]
        for x, y in ((cx0, cy0), (cx1, cy1)):
            assert -1e-6 <= x <= 100 + 1e-6 and 10 - 1e-6 <= y <= 90 + 1e-6
            assert abs((bx - ax) * (y - ay) - (by - ay) * (x - ax)) < 1e-6 * (1 + abs(bx - ax) + abs(by - ay)) * 300
        if inside:
            length = math.hypot(bx - ax, by - ay)
            assert math.hypot(cx1 - cx0, cy1 - cy0) == pytest.approx(length * (inside[-1] - inside[0]), abs=length / 399 * 2 + 1e-6)


CLIPPED_JS = """
() => {
  // Text that is cut without an ellipsis-and-title, or an element pushed outside the box that
  // hides its overflow (or the window).
  const vw = document.documentElement.clientWidth, vh = document.documentElement.clientHeight;
  const scope = '.topbar *, .promptbar, .promptbar *, .side *, .sub-toolbar, .sub-toolbar *, ' +
                '.sub-groups *, .sub-item text, .statusbar *, .browser *';
  const bad = [];
  const describe = (e) => `${e.tagName.toLowerCase()}.${e.className.baseVal ?? e.className}` +
                          ` "${(e.textContent || e.value || '').trim().slice(0, 40)}"`;
  const titled = (e, text) => { const t = e.closest('[title]'); return t && t.title.includes(text); };
  for (const e of document.querySelectorAll(scope)) {
    const r = e.getBoundingClientRect();
    if (r.width === 0 || r.height === 0 || e.closest('[hidden]')) continue;
    const cs = getComputedStyle(e);
    const text = [...e.childNodes].filter(n => n.nodeType === 3).map(n => n.textContent).join('').trim();
    if (text && cs.overflowX !== 'visible' && e.scrollWidth > e.clientWidth + 1) {
      if (!(cs.textOverflow === 'ellipsis' && titled(e, text))) bad.push(`cut text: ${describe(e)}`);
    }
    if (e instanceof SVGElement) {
      const item = e instanceof SVGTextElement && e.closest('g.sub-item');
      if (item && r.right > item.querySelector('rect').getBoundingClientRect().right + 0.5) {
        bad.push(`text past its box: ${describe(e)}`);
      }
      continue;
    }
    let clip = e.parentElement;
    while (clip && clip !== document.body && getComputedStyle(clip).overflowX === 'visible') clip = clip.parentElement;
    const c = clip && clip !== document.body ? clip.getBoundingClientRect() : { left: 0, right: vw, top: 0, bottom: vh };
    const scrolls = clip && clip !== document.body && ['auto', 'scroll'].includes(getComputedStyle(clip).overflowY);
    const outX = r.left < c.left - 1 || r.right > c.right + 1;
    const outY = !scrolls && (r.top < c.top - 1 || r.bottom > c.bottom + 1);
    if ((outX || outY) && !(clip && getComputedStyle(clip).textOverflow === 'ellipsis' && titled(e, (e.textContent || '').trim()))) {
      bad.push(`outside its ${clip ? describe(clip) : 'window'}: ${describe(e)}`);
    }
  }
  return bad;
}
"""


@pytest.mark.parametrize("size", [(1400, 880), (1100, 760)])
def test_no_clipped_text(browser, site, shot, size) -> None:
    width, height = size
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        _open(page, f"{site['url']}?graph=demo")
        features = page.evaluate(
            """() => window.__atlas.state.doc.nodes
                  .filter(n => n.feature_type === 'cross layer transcoder').slice(0, 3).map(n => n.node_id)"""
        )
        page.evaluate("ids => window.__atlas.setPinned(ids)", features)
        page.evaluate("id => window.__atlas.selectNode(id)", features[0])
        page.wait_for_selector("[data-testid=feature-example]")
        page.wait_for_selector("[data-testid=edges-outgoing] li")
        page.wait_for_function(
            "document.querySelector('[data-testid=scores]').textContent.includes('completeness')"
        )
        _assert_all_inside(page)
        _check_labels(page)
        clipped = page.evaluate(CLIPPED_JS)
        assert not clipped, clipped
        # The scores line shows both numbers in full.
        scores = page.inner_text("[data-testid=scores]")
        assert "replacement" in scores and "completeness" in scores and "…" not in scores
        shot(page, f"explorer-panels-{width}")
        _open(page, f"{site['url']}{DENSE}")
        _check_labels(page)
        assert not _overlapping_boxes(page.evaluate("window.__atlas.canvas.nodeBoxes()"))
        page.click("[data-testid=graph-fit]")
        _settle(page)
        _assert_all_inside(page)
        _check_labels(page)
        assert not page.evaluate(CLIPPED_JS)
        if width == 1100:
            shot(page, "explorer-dense-1100")
        _open(page, site["url"])  # the graph browser
        assert not page.evaluate(CLIPPED_JS)
    finally:
        context.close()
    assert not errors, errors
