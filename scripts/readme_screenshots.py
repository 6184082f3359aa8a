#!/usr/bin/env python
"""The README's explorer screenshots, taken on the bundled demo with Playwright and Chromium.

    python scripts/readme_screenshots.py [--out docs/img]

Traces three prompts of the toy world through the demo model (with its dashboards' labels), adds
a synthetic 1024-token graph (`graph/synthetic.py`; the demo model is trained on short sentences),
serves them like `circuit-atlas serve`, and saves: `explorer.png` (the two-hop question, a region
feature selected, its strongest neighbours pinned), `explorer-long-prompt.jpg` (the 1024-token
graph: angled, numbered token labels, collapsed runs, the overview strip) and `graph-browser.png`
(the landing page). Needs /usr/bin/chromium; takes about a minute on a CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import circuit_atlas
from circuit_atlas.cli.demo import copy_features
from circuit_atlas.cli.trace import default_slug
from circuit_atlas.demo import bundle
from circuit_atlas.features import FeatureStore
from circuit_atlas.graph import graph_scores
from circuit_atlas.graph.bundle import write_graph_bundle
from circuit_atlas.graph.synthetic import synthetic_graph_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from case_studies.figures import explorer_screenshot  # noqa: E402

MORE_PROMPTS = ("the capital of the region containing scranton is", "13 + 37 =")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    args = parser.parse_args()
    model = circuit_atlas.load("demo", "demo")
    work = Path(tempfile.mkdtemp(prefix="atlas-readme-"))
    features_dir = copy_features(bundle.demo_features_path("clt"), work / "features")
    graphs = work / "graphs"
    with FeatureStore(features_dir) as store:
        labels = store.labels()
        slugs = []
        for prompt in (bundle.DEFAULT_PROMPT, *MORE_PROMPTS):
            graph = circuit_atlas.attribute(model, prompt, progress=False)
            slugs.append(default_slug(prompt))
            write_graph_bundle(graph, graphs, slugs[-1], labels=labels, scores=graph_scores(graph))
        long = synthetic_graph_json(1024, 900, 6000, n_layers=26, seed=1024, slug="synthetic-1024")
        (graphs / "synthetic-1024.json").write_text(json.dumps(long))
        texas = next(f"{layer}_{feat}_8" for (layer, feat), text in sorted(labels.items())
                     if text.startswith("texas") and layer == 0)
        shots = [
            explorer_screenshot(graphs, args.out / "explorer.png", slug=slugs[0], node_id=texas,
                                features=store, model=model, pin_neighbours=5),
            explorer_screenshot(graphs, args.out / "explorer-long-prompt.jpg", slug="synthetic-1024"),
            explorer_screenshot(graphs, args.out / "graph-browser.png", slug=None, size=(1500, 420)),
        ]
    for shot in shots:
        print(f"wrote {shot}")


if __name__ == "__main__":
    main()
