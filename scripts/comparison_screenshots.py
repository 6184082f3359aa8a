#!/usr/bin/env python
"""The explorer's comparison screenshots of docs/graph-comparison.md, taken on the bundled demo
with Playwright and Chromium.

    python scripts/comparison_screenshots.py [--out docs/img]

Traces the two-hop questions about dallas, oakland and houston through the demo model (with its
dashboards' labels), writes their typical circuit (`aggregate_graphs`) beside them, serves them
with the demo's feature store like `circuit-atlas serve --features`, and saves `diff-view.png`
(dallas against oakland, the texas feature selected) and `supernode-suggestions.png` (the dallas
graph at node threshold 0.9 with the suggestions panel open at min. similarity 0.5, the first
suggestion accepted). Needs /usr/bin/chromium; takes
about half a minute on a CPU.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import circuit_atlas
from circuit_atlas.cli.demo import copy_features
from circuit_atlas.demo import bundle, toyworld
from circuit_atlas.features import FeatureStore
from circuit_atlas.graph import aggregate_graphs, graph_scores
from circuit_atlas.graph.bundle import write_graph_bundle
from circuit_atlas.server.app import create_app
from circuit_atlas.server.runner import BackgroundServer

CITIES = ("dallas", "oakland", "houston")
CHROMIUM = "/usr/bin/chromium"


def write_graphs(model, graphs: Path, labels) -> None:
    traced = []
    for city in CITIES:
        graph = circuit_atlas.attribute(model, toyworld.TWO_HOP_FRAME.format(city=city), progress=False)
        write_graph_bundle(graph, graphs, city, labels=labels, scores=graph_scores(graph))
        traced.append(graph)
    typical = aggregate_graphs(traced, names=list(CITIES), labels=labels).graph
    write_graph_bundle(typical, graphs, "typical-city", labels=labels)


def take(url: str, out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright  # a dev dependency: imported when used

    out.mkdir(parents=True, exist_ok=True)
    shots = [out / "diff-view.png", out / "supernode-suggestions.png"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, chromium_sandbox=False,
                                     args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1500, "height": 860})
        page.goto(f"{url}?diff=dallas,oakland")
        page.wait_for_selector("[data-testid=diff-node]", timeout=60_000)
        page.locator("[data-testid=diff-row-disappear]").first.click()
        page.wait_for_selector("[data-testid=diff-selected]")
        page.mouse.move(0, 0)
        page.screenshot(path=str(shots[0]))
        page.goto(f"{url}?graph=dallas&pruningThreshold=0.9")
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        page.get_by_test_id("suggest-similarity").fill("0.5")
        page.get_by_test_id("suggest-similarity").dispatch_event("change")
        page.get_by_test_id("suggest-supernodes").click()
        page.wait_for_selector("[data-testid=suggestion]", timeout=60_000)
        page.get_by_test_id("suggestion-accept").first.click()
        page.wait_for_selector("[data-testid=suggestion-accepted]")
        page.wait_for_selector("[data-testid=supernode-item]")
        page.mouse.move(0, 0)
        page.screenshot(path=str(shots[1]))
        browser.close()
    return shots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    args = parser.parse_args()
    model = circuit_atlas.load("demo", "demo")
    work = Path(tempfile.mkdtemp(prefix="atlas-compare-"))
    features_dir = copy_features(bundle.demo_features_path("clt"), work / "features")
    with FeatureStore(features_dir) as store:
        write_graphs(model, work / "graphs", store.labels())
        with BackgroundServer(create_app(work / "graphs", features=store, model=model)) as server:
            shots = take(server.url, args.out)
    for shot in shots:
        print(f"wrote {shot}")


if __name__ == "__main__":
    main()
