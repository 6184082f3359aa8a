"""Figures of the demo case studies: explorer screenshots and bar charts, as PNG files.

Both are drawn by a headless Chromium through Playwright (already a test dependency), so the case
studies need no plotting library: the explorer is the real web app served from a temporary data
folder, and a bar chart is a small SVG page.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

from circuit_atlas.server.app import create_app
from circuit_atlas.server.runner import BackgroundServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _browser(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      chromium_sandbox=False, args=CHROMIUM_ARGS)


PIN_NEIGHBOURS_JS = """
([id, n]) => {
  // The selected node and its n strongest neighbours in the view, pinned to the subgraph pane.
  const links = window.__atlas.state.doc.links.filter((l) => l.source === id || l.target === id);
  links.sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight));
  const ids = [id, ...links.slice(0, n).map((l) => (l.source === id ? l.target : l.source))];
  window.__atlas.setPinned([...new Set(ids)]);
  return ids.length;
}
"""
READY_JS = """
(wantPins) => {
  const a = window.__atlas;
  if (!a || !a.canvas.stats || a.canvas.stats.drawnMs === null || a.canvas.viewState().pending) return false;
  if (a.state.clickedId && !document.querySelector('[data-testid=node-id]')) return false;
  const panel = document.querySelector('[data-testid=feature-panel]');
  if (a.state.clickedId && a.state.featuresAvailable && !panel.hidden && !panel.textContent.trim()) return false;
  if (wantPins && document.querySelectorAll('[data-testid=pinned-item]').length < wantPins) return false;
  if (wantPins && !document.querySelector('[data-testid=score-completeness]')) return false;
  return true;
}
"""


def explorer_screenshot(graphs: Path, path: Path, *, slug: str | None, node_id: str | None = None,
                        features=None, model=None, size: tuple[int, int] = (1500, 900),
                        pin_neighbours: int = 0, attention: tuple[str, str] | None = None) -> Path:
    """Serve `graphs` (a data folder of graph bundles), open graph `slug` with `node_id`
    selected (and, with `pin_neighbours`, it and its strongest neighbours pinned to the subgraph
    pane), wait until everything is drawn and loaded, and save the page as `path`. `features`
    (a FeatureStore) fills the feature panel. `slug=None`: the graph browser (every graph).
    `attention=(source, "L.H")`: the attention panel opened on the edge source -> `node_id` (from
    the node panel's input row) with head L.H chosen."""
    from playwright.sync_api import sync_playwright  # a dev dependency: imported when used

    path.parent.mkdir(parents=True, exist_ok=True)
    query = "" if slug is None else f"?graph={slug}" + (f"&clickedId={node_id}" if node_id else "")
    with BackgroundServer(create_app(graphs, features=features, model=model)) as server, \
            sync_playwright() as pw:
        browser = _browser(pw)
        page = browser.new_page(viewport={"width": size[0], "height": size[1]})
        page.goto(server.url + query)
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        if slug is None:
            page.screenshot(path=str(path))
            browser.close()
            return path
        pins = page.evaluate(PIN_NEIGHBOURS_JS, [node_id, pin_neighbours]) if node_id and pin_neighbours else 0
        page.wait_for_function(READY_JS, arg=pins, timeout=30_000)
        if attention is not None:
            _open_attention(page, *attention)
        page.mouse.move(0, 0)
        page.screenshot(path=str(path))
        browser.close()
    return path


def _open_attention(page, source: str, head: str) -> None:
    """Click the "heads" button of the input row `source`, then head `head`, and wait for its
    pairs (attention-panel.js marks the panel ready with the head it shows)."""
    page.click(f"[data-testid=edges-incoming] li[data-node-id='{source}'] [data-testid=edge-heads]")
    page.wait_for_selector("[data-testid=attention-panel][data-ready]", timeout=30_000)
    page.click(f"[data-testid=attention-heads] li[data-head='{head}']")
    page.wait_for_selector(f"[data-testid=attention-panel][data-ready='{head}']", timeout=30_000)
    page.locator("[data-testid=attention-panel]").scroll_into_view_if_needed()


def bar_chart_svg(title: str, rows: Sequence[tuple[str, float]], *, width: int = 820) -> str:
    """An SVG page of horizontal bars, one per (name, share in [0, 1])."""
    bars = []
    for i, (name, share) in enumerate(rows):
        y = 40 + i * 60
        bars.append(f'<text x="10" y="{y + 24}" font-size="16">{html.escape(name)}</text>'
                    f'<rect x="300" y="{y}" width="{share * 420:.1f}" height="36" fill="#3b6ea8"/>'
                    f'<text x="{310 + share * 420:.1f}" y="{y + 24}" font-size="16">'
                    f'{100 * share:.1f} %</text>')
    height = 60 + 60 * len(rows)
    return (f'<html><body style="margin:0;font-family:sans-serif;background:white">'
            f'<svg width="{width}" height="{height}"><text x="10" y="24" font-size="17" '
            f'font-weight="bold">{html.escape(title)}</text>{"".join(bars)}'
            f'<line x1="720" y1="35" x2="720" y2="{height - 20}" stroke="#999" '
            f'stroke-dasharray="4"/><text x="700" y="{height - 6}" font-size="12">100 %</text>'
            f'</svg></body></html>')


def bar_chart_png(path: Path, title: str, rows: Sequence[tuple[str, float]]) -> Path:
    """Save `bar_chart_svg(title, rows)` as a PNG at `path`."""
    from playwright.sync_api import sync_playwright

    path.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = _browser(pw)
        page = browser.new_page(viewport={"width": 820, "height": 60 + 60 * len(rows)})
        page.set_content(bar_chart_svg(title, rows))
        page.screenshot(path=str(path))
        browser.close()
    return path
