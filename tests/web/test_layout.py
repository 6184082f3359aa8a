"""The explorer's layout in Chromium: the link graph fits its pane, zoom / pan / fit keep hit-testing
right, canvas labels never overlap or overflow, and no panel cuts its text at common window sizes.

Positions are checked against the geometry the page reports (client rectangles) and against the
zoom's defining property (the point under the cursor stays put), not against stored numbers.
"""

from __future__ import annotations

import math

import pytest

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


def _check_labels(page) -> dict:
    labels = page.evaluate("window.__atlas.canvas.drawnLabels()")
    view = page.evaluate("window.__atlas.canvas.viewState()")
    canvas = view["canvas"]
    for kind in ("tokens", "logits"):
        boxes = labels[kind]
        for box in boxes:
            assert canvas["left"] <= box["x0"] and box["x1"] <= canvas["right"] + 0.5, (kind, box)
            assert canvas["top"] <= box["y0"] and box["y1"] <= canvas["bottom"], (kind, box)
            # Either the whole text, or a prefix of it cut with an ellipsis.
            assert box["text"] == box["full"] or (
                box["text"].endswith("…") and box["full"].startswith(box["text"][:-1])
            ), box
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert not _overlap(a, b), f"{kind} labels overlap: {a} {b}"
    return labels


def test_dense_graph_fits_zooms_pans_and_fits_again(page, site, shot) -> None:
    _open(page, f"{site['url']}{DENSE}")
    fitted = _assert_all_inside(page)
    # The whole prompt is labelled, long tokens cut with an ellipsis; logit labels apart.
    labels = _check_labels(page)
    tokens = sorted(labels["tokens"], key=lambda t: t["pos"])
    assert [t["pos"] for t in tokens] == list(range(10))
    long_label = tokens[2]
    assert long_label["full"] == site["long_tokens"][2] and long_label["text"].endswith("…")
    assert site["long_logit"] in {lbl["full"] for lbl in labels["logits"]}
    assert len(labels["logits"]) == 5
    # Hovering a cut token label shows the whole token.
    page.mouse.move((long_label["x0"] + long_label["x1"]) / 2, (long_label["y0"] + long_label["y1"]) / 2)
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
    page.wait_for_function("window.__atlas.canvas.viewState().k > 2")
    view = _settle(page)
    kx, ky = page.evaluate("[window.__atlas.canvas.view.kx, window.__atlas.canvas.view.ky]")
    assert kx == pytest.approx(view["k"]) and 1 < ky < kx
    zoomed = {p["id"]: p for p in _positions(page)}
    for p in fitted:
        q = zoomed[p["id"]]
        assert q["x"] == pytest.approx(cx + (p["x"] - cx) * kx, abs=0.6)
        assert q["y"] == pytest.approx(cy + (p["y"] - cy) * ky, abs=0.6)
    visible = [p for p in zoomed.values() if p["visible"]]
    assert 0 < len(visible) < len(fitted)

    # Hover, click, ctrl-click still hit the node under the pointer in the zoomed view.
    target, other = _isolated_visible(list(zoomed.values()))[:2]
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


def test_label_placement_and_zoom_math(page, site) -> None:
    """labels.js and view.js as modules: random cases checked against brute-force geometry."""
    _open(page, f"{site['url']}?graph=demo")
    result = page.evaluate(
        """async () => {
          const { placeLabels, fitText } = await import('/static/js/labels.js');
          const { ViewTransform } = await import('/static/js/view.js');
          let seed = 7;
          const rand = () => (seed = (seed * 16807) % 2147483647) / 2147483647;
          const measure = (t) => 7 * t.length;  // a monospace font, 7 px a character
          const cases = [];
          for (let c = 0; c < 200; c++) {
            const n = 1 + Math.floor(rand() * 12);
            const items = [];
            for (let i = 0; i < n; i++) {
              const len = 1 + Math.floor(rand() * 14);
              items.push({ x: 20 + rand() * 300, text: 'abcdefghijklmnopqrstuvwxyz'.slice(0, len) });
            }
            cases.push({ items, placed: placeLabels(items, { measure, lines: 2, gap: 4, left: 10, right: 330 }) });
          }
          const fits = [
            fitText('internationalization', 70, measure),
            fitText('short', 70, measure),
            fitText('abc', 10, measure),
          ];
          const v = new ViewTransform();
          v.setBounds({ x0: 40, y0: 0, x1: 800, y1: 500 });
          const zooms = [];
          for (let i = 0; i < 50; i++) {
            const cx = 40 + rand() * 760, cy = rand() * 500, f = 0.5 + rand() * 2;
            const wx = (cx - v.tx) / v.kx, wy = (cy - v.ty) / v.ky;
            v.zoomAt(cx, cy, f);
            const s = v.toScreen(wx, wy);
            const tl = v.toScreen(40, 0), br = v.toScreen(800, 500);
            zooms.push({ k: v.k, kx: v.kx, ky: v.ky, sx: s.x, sy: s.y, cx, cy, tl, br });
          }
          const { clipSegment } = await import('/static/js/graph-canvas.js');
          const clips = [];
          for (let i = 0; i < 300; i++) {
            const seg = [rand() * 300 - 100, rand() * 300 - 100, rand() * 300 - 100, rand() * 300 - 100];
            clips.push({ seg, clipped: clipSegment(...seg, 0, 10, 100, 90) });
          }
          return { cases, fits, zooms, clips };
        }"""
    )
    for case in result["cases"]:
        placed = case["placed"]
        boxes = [dict(p, y0=p["line"], y1=p["line"] + 1) for p in placed if p["text"]]
        for i, a in enumerate(boxes):
            assert 10 <= a["x0"] and a["x1"] <= 330
            assert a["x1"] - a["x0"] == pytest.approx(7 * len(a["text"]))
            for b in boxes[i + 1 :]:
                if a["line"] == b["line"]:
                    assert a["x1"] + 4 <= b["x0"] + 1e-9 or b["x1"] + 4 <= a["x0"] + 1e-9, (a, b)
        for item, p in zip(case["items"], placed):
            if p["text"]:
                assert p["text"] == item["text"] or (
                    p["text"].endswith("…") and item["text"].startswith(p["text"][:-1])
                )
        # With few, well separated anchors nothing is cut.
        xs = sorted(it["x"] for it in case["items"])
        if all(b - a > 7 * 15 + 4 for a, b in zip(xs, xs[1:])) and xs[0] > 60 and xs[-1] < 280:
            assert all(p["text"] == it["text"] for it, p in zip(case["items"], placed))
    assert result["fits"] == ["internati…", "short", ""]
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
            # On the original segment.
            assert abs((bx - ax) * (y - ay) - (by - ay) * (x - ax)) < 1e-6 * (1 + abs(bx - ax) + abs(by - ay)) * 300
        if inside:
            length = math.hypot(bx - ax, by - ay)
            assert math.hypot(cx1 - cx0, cy1 - cy0) == pytest.approx(length * (inside[-1] - inside[0]), abs=length / 399 * 2 + 1e-6)
    for z in result["zooms"]:
        assert 1 <= z["k"] <= 40 and z["kx"] == pytest.approx(z["k"]) and z["ky"] == pytest.approx(math.sqrt(z["k"]))
        # The scaled plot always covers the pane's plot: no empty space is ever panned in.
        assert z["tl"]["x"] <= 40 + 1e-6 and z["tl"]["y"] <= 1e-6
        assert z["br"]["x"] >= 800 - 1e-6 and z["br"]["y"] >= 500 - 1e-6
        # Away from the clamp, the point under the cursor stays there.
        if z["tl"]["x"] < 40 - 1e-6 and z["br"]["x"] > 800 + 1e-6:
            assert z["sx"] == pytest.approx(z["cx"], abs=1e-6)
        if z["tl"]["y"] < -1e-6 and z["br"]["y"] > 500 + 1e-6:
            assert z["sy"] == pytest.approx(z["cy"], abs=1e-6)


CLIPPED_JS = """
() => {
  // Text that is cut without an ellipsis-and-title, or an element pushed outside the box that
  // hides its overflow (or the window).
  const vw = document.documentElement.clientWidth, vh = document.documentElement.clientHeight;
  const scope = '.topbar *, .promptbar, .promptbar *, .side *, .sub-toolbar, .sub-toolbar *, ' +
                '.sub-groups *, .sub-item text, .statusbar *';
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
    if (e instanceof SVGTextElement) {
      const box = e.closest('g').querySelector('rect').getBoundingClientRect();
      if (r.right > box.right + 0.5) bad.push(`text past its box: ${describe(e)}`);
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
        page.wait_for_selector("[data-testid=score-completeness]")
        _assert_all_inside(page)
        _check_labels(page)
        clipped = page.evaluate(CLIPPED_JS)
        assert not clipped, clipped
        # The scores line shows both numbers in full.
        scores = page.inner_text("[data-testid=scores]")
        assert "replacement" in scores and "completeness" in scores and "…" not in scores
        shot(page, f"explorer-panels-{width}")
        _open(page, f"{site['url']}{DENSE}")
        _assert_all_inside(page)
        _check_labels(page)
        assert not page.evaluate(CLIPPED_JS)
        if width == 1100:
            shot(page, "explorer-dense-1100")
    finally:
        context.close()
    assert not errors, errors
