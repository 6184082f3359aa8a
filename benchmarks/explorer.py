"""The explorer in Chromium on big graphs: time to first draw and frame times of pan, zoom, hover.

Synthetic pruned graphs (`circuit_atlas.graph.synthetic.synthetic_graph_json`: features crowd
the last positions and a few earlier ones, causal links that favour nearby positions) are
served from a temporary data folder by the real server and opened in Debian's Chromium
(headless, software rendering, through Playwright):

* first draw: from navigation start to the end of the first painted slice of the graph (its
  nodes and the first edges on screen), and to the end of the whole base repaint (every edge);
  both include loading the page, fetching, parsing and laying out the graph JSON. The first
  visit of each graph also includes the server reading the file and building the view (it
  caches it), so it is reported apart;
* frame times: a requestAnimationFrame loop records the interval between frames while the page
  is driven by one input event per frame (60 frames each): pan (pointer drag), zoom (wheel in,
  then out), hover (the pointer jumping between nodes). Reported: median, 95th percentile and
  worst frame interval (16.7 ms is the display's own rate), over the interaction and the
  repaint that follows it (1 s after the last event). Also the longest base-painting slice;
* edge hover: the pointer jumping between points midway between two nodes, with every edge
  made hit-testable (as the attention panel makes the edges it can explain): each move asks the
  edge index (edge-hits.js) for the edge under the pointer, highlights it and shows its
  tooltip. The index is built in slices over the frames after the graph is painted (here, in
  the recorded frames just before the moves); its build time and longest slice are reported.

Goal (issue 14): first draw under 1.5 s and frames under 50 ms.

    python benchmarks/explorer.py                      # the three graphs, 3 runs each
    python benchmarks/explorer.py --runs 5 --graphs big
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from circuit_atlas.graph.synthetic import synthetic_graph_json
from circuit_atlas.server.app import create_app
from circuit_atlas.server.runner import BackgroundServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
GRAPHS = {
    # name: (tokens, features, links, layers)
    "big": (96, 4700, 50_000, 26),  # ≈ 5 000 nodes (with errors, embeddings, logits)
    "long": (1024, 2000, 20_000, 26),  # ≈ 2 900 nodes
    "both": (1024, 4300, 50_000, 26),  # ≈ 5 700 nodes
}

DRIVE = """
async ([kind, frames]) => {
  const c = window.__atlas.canvas;
  const o = c.overlay;
  const r = o.getBoundingClientRect();
  const plot = c.viewState().plot;
  const cx = (plot.left + plot.right) / 2, cy = (plot.top + plot.bottom) / 2;
  const frame = () => new Promise((done) => requestAnimationFrame(done));
  const stamps = [];
  let recording = true;
  const loop = (t) => { stamps.push(t); if (recording) requestAnimationFrame(loop); };
  requestAnimationFrame(loop);
  await frame();
  const pointer = (type, x, y, buttons) =>
    o.dispatchEvent(new PointerEvent(type, { clientX: x, clientY: y, buttons, button: 0, pointerId: 1, bubbles: true }));
  const start = performance.now();
  if (kind === "pan") {
    pointer("pointerdown", cx, cy, 1);
    for (let i = 1; i <= frames; i++) { await frame(); pointer("pointermove", cx + 6 * i, cy + (i % 7), 1); }
    pointer("pointerup", cx + 6 * frames, cy, 0);
  } else if (kind === "zoom") {
    for (let i = 0; i < frames; i++) {
      await frame();
      o.dispatchEvent(new WheelEvent("wheel", { clientX: cx, clientY: cy, deltaY: i < frames / 2 ? -60 : 60, bubbles: true, cancelable: true }));
    }
  } else if (kind === "edges") {
    c.edgeActions = () => true;
    c.edgeAction = () => "benchmark";
    // As the attention panel does once it knows it can explain edges; the frames recorded here
    // include the index's build slices.
    c.prepareEdgeIndex();
    while (!(c._edgeIndex && c._edgeIndex.ready)) await frame();
    const nodes = c.screenPositions().filter((p) => p.visible);
    for (let i = 0; i < frames; i++) {
      await frame();
      const p = nodes[(i * 37) % nodes.length], q = nodes[(i * 53 + 11) % nodes.length];
      pointer("pointermove", (p.x + q.x) / 2, (p.y + q.y) / 2, 0);
    }
    pointer("pointermove", r.left + 2, r.top + 2, 0);
  } else {
    const nodes = c.screenPositions().filter((p) => p.visible);
    for (let i = 0; i < frames; i++) {
      await frame();
      const p = nodes[(i * 37) % nodes.length];
      pointer("pointermove", p.x, p.y, 0);
    }
    pointer("pointermove", r.left + 2, r.top + 2, 0);
  }
  const end = performance.now();
  while (performance.now() - end < 1000) await frame();
  recording = false;
  const gaps = [];
  for (let i = 1; i < stamps.length; i++) if (stamps[i] >= start) gaps.push(stamps[i] - stamps[i - 1]);
  return gaps;
}
"""


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "max": ordered[-1],
    }


def measure(page, url: str, graph_id: str) -> dict:
    """One visit: load figures (from navigation start), then frame intervals while driving it."""
    page.goto(f"{url}?graph={graph_id}")
    page.wait_for_function("window.__atlas && window.__atlas.canvas.stats.drawnMs !== null", timeout=60_000)
    first = page.evaluate(
        """() => ({
          first: performance.getEntriesByName('atlas-first-draw')[0].startTime,
          drawn: performance.getEntriesByName('atlas-drawn')[0].startTime,
          nodes: Number(document.body.dataset.nodeCount), links: Number(document.body.dataset.linkCount),
          heap: performance.memory ? performance.memory.usedJSHeapSize : null,
        })"""
    )
    out = dict(first)
    for kind in ("pan", "zoom", "hover", "edges"):
        page.evaluate("window.__atlas.canvas.home(); window.__atlas.canvas.stats.maxSliceMs = 0")
        page.wait_for_function("!window.__atlas.canvas.viewState().pending")
        out[kind] = _stats(page.evaluate(DRIVE, [kind, 60]))
        out[f"{kind}_slice"] = page.evaluate("window.__atlas.canvas.stats.maxSliceMs")
    out["edge_index"] = page.evaluate("window.__atlas.canvas.stats.edgeIndexMs")
    out["edge_index_slice"] = page.evaluate("window.__atlas.canvas.stats.maxIndexSliceMs")
    page.evaluate("window.__atlas.canvas.fit()")
    page.wait_for_function("!window.__atlas.canvas.viewState().pending", timeout=30_000)
    out["fit_repaint"] = page.evaluate("window.__atlas.canvas.stats.lastPaintMs")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--graphs", nargs="*", default=list(GRAPHS), choices=list(GRAPHS))
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=880)
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        for name in args.graphs:
            tokens, features, links, layers = GRAPHS[name]
            t0 = time.perf_counter()
            doc = synthetic_graph_json(tokens, features, links, n_layers=layers, seed=3, slug=name)
            (data / f"{name}.json").write_text(json.dumps(doc))
            print(f"# {name}: {len(doc['nodes'])} nodes, {len(doc['links'])} links, {tokens} tokens "
                  f"(generated in {time.perf_counter() - t0:.1f} s)")
        results: dict[str, list[dict]] = {name: [] for name in args.graphs}
        cold: dict[str, float] = {}
        with BackgroundServer(create_app(data)) as server, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         chromium_sandbox=False, args=CHROMIUM_ARGS)
            # The first visit also times the server reading the file and building the view
            # (cached afterwards); the runs after it measure the page itself.
            for name in args.graphs:
                page = browser.new_page(viewport={"width": args.width, "height": args.height})
                page.goto(f"{server.url}?graph={name}")
                page.wait_for_function("window.__atlas && window.__atlas.canvas.stats.drawnMs !== null",
                                       timeout=60_000)
                cold[name] = page.evaluate("performance.getEntriesByName('atlas-first-draw')[0].startTime")
                page.close()
            for run in range(args.runs):
                for name in args.graphs:
                    page = browser.new_page(viewport={"width": args.width, "height": args.height})
                    results[name].append(measure(page, server.url, name))
                    page.close()
            browser.close()
    if args.json:
        print(json.dumps(results, indent=1))
    med = lambda rows, f: statistics.median(f(r) for r in rows)  # noqa: E731
    print(f"\nmedians of {args.runs} runs, {args.width}×{args.height} window; frame intervals in ms "
          "(median / p95 / worst)")
    print("| graph | nodes | edges | first draw (first visit) | first draw | all edges drawn | pan | zoom | hover "
          "| edge hover | edge index (longest slice) | longest slice | fit repaint |")
    print("|---|---:|---:|---:|---:|---:|---|---|---|---|---:|---:|---:|")
    for name, rows in results.items():
        frames = []
        for kind in ("pan", "zoom", "hover", "edges"):
            frames.append(" / ".join(f"{med(rows, lambda r: r[kind][s]):.0f}" for s in ("median", "p95", "max")))
        slice_ms = med(rows, lambda r: max(r[f"{kind}_slice"] for kind in ("pan", "zoom", "hover", "edges")))
        print(f"| {name} | {rows[0]['nodes']} | {rows[0]['links']} | {cold[name] / 1000:.2f} s "
              f"| {med(rows, lambda r: r['first']) / 1000:.2f} s "
              f"| {med(rows, lambda r: r['drawn']) / 1000:.2f} s | {frames[0]} | {frames[1]} | {frames[2]} | {frames[3]} "
              f"| {med(rows, lambda r: r['edge_index']):.0f} ms ({med(rows, lambda r: r['edge_index_slice']):.0f} ms) "
              f"| {slice_ms:.0f} ms | {med(rows, lambda r: r['fit_repaint']):.0f} ms |")


if __name__ == "__main__":
    main()
