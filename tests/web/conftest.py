"""Browser-test fixtures: Debian's Chromium through Playwright, against a live server thread.

Never downloads a browser: when /usr/bin/chromium is missing the tests are skipped.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import pytest

from circuit_atlas.graph import random_graph, to_graph_json
from circuit_atlas.graph.bundle import write_graph_bundle
from circuit_atlas.graph.synthetic import synthetic_graph_json
from circuit_atlas.server.app import create_app
from circuit_atlas.server.features import JsonDirFeatureProvider
from circuit_atlas.server.runner import BackgroundServer

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (install Debian's chromium package to run browser tests)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            chromium_sandbox=False,
            args=CHROMIUM_ARGS,
        )
        yield browser
        browser.close()


def _feature_card(layer: int, index: int) -> dict:
    tokens = ["The", " capital", " of", " the", " state", " containing", " Dallas", " is"]
    acts = [0.0] * len(tokens)
    acts[6] = 3.0 + (index % 5) * 0.2
    acts[5] = 1.1
    return {
        "index": index,
        "label": f"store label {layer}/{index}",
        "top_logits": ["<pad>", " Austin", " Texas", "<eos>", " Houston"],
        "bottom_logits": [" Paris", "</s>", " London"],
        "act_min": 0.0,
        "act_max": 4.0,
        "activation_frequency": 0.0012,
        "histogram": [float(2 ** max(0, 12 - i)) for i in range(32)],
        "examples_quantiles": [
            {
                "quantile_name": "Top activations",
                "examples": [
                    {"tokens": tokens, "tokens_acts_list": acts, "train_token_ind": 6, "is_repeated_datapoint": False},
                    {"tokens": tokens[::-1], "tokens_acts_list": acts[::-1], "train_token_ind": 1, "is_repeated_datapoint": False},
                ],
            }
        ],
    }


LONG_TOKENS = {2: " internationalization", 5: "\n\n", 7: " Massachusetts"}
LONG_LOGIT = " counterrevolutionaries"
# Synthetic long prompts (graph/synthetic.py): tokens -> (features, links, layers).
LONG_PROMPTS = {64: (160, 1200, 16), 256: (420, 3000, 16), 1024: (900, 6000, 26)}


def bundle_labels(graph) -> dict:
    """Dashboard labels for every other selected feature of `graph`, as `trace --features` gives
    them: the bundle keeps them in feature-labels.json."""
    coords = sorted({(int(layer), int(feat)) for layer, _pos, feat in graph.feature_coords.tolist()})
    return {key: f"bundle label {key[0]}/{key[1]}" for key in coords[::2]}


def _with_long_tokens(doc: dict) -> dict:
    """Give the dense graph tokens too long for their columns and a long logit token, so the
    explorer's truncation and label placement are exercised."""
    tokens = doc["metadata"]["prompt_tokens"]
    for pos, token in LONG_TOKENS.items():
        tokens[pos] = token
    doc["metadata"]["prompt"] = "".join(tokens)
    logit = next(n for n in doc["nodes"] if n["feature_type"] == "logit")
    logit["clerp"] = f'Output "{LONG_LOGIT}" (p=0.317)'
    return doc


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A data folder (native bundle + JSON-only graph), a feature store, and a running server."""
    root = tmp_path_factory.mktemp("web")
    data = root / "data"
    graph = random_graph(n_layers=4, n_pos=7, n_sel=90, n_logits=3, seed=11)
    labels = bundle_labels(graph)
    write_graph_bundle(graph, data, "demo", labels=labels)
    (data / "loose").mkdir()
    doc = to_graph_json(graph, "jsonly", 1.0, 0.98)
    # A saved view in circuit-tracer's frontend's string form (docs/graph-json.md §4).
    saved = [n["node_id"] for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder"][:2]
    doc["qParams"]["pinnedIds"] = ",".join(saved)
    doc["qParams"]["supernodes"] = json.dumps([["saved group", *saved]])
    (data / "loose" / "jsonly.json").write_text(json.dumps(doc))
    big = random_graph(n_layers=6, n_pos=10, n_sel=600, n_logits=5, seed=5, density=0.3)
    (data / "loose" / "dense.json").write_text(json.dumps(_with_long_tokens(to_graph_json(big, "dense", 1.0, 0.97))))
    (data / "long").mkdir()
    for n_tokens, (n_features, n_links, n_layers) in LONG_PROMPTS.items():
        doc = synthetic_graph_json(n_tokens, n_features, n_links, n_layers=n_layers, seed=n_tokens,
                                   slug=f"long-{n_tokens}")
        (data / "long" / f"long-{n_tokens}.json").write_text(json.dumps(doc))
    features = root / "features"
    for layer, _pos, index in graph.feature_coords.tolist():
        (features / str(layer)).mkdir(parents=True, exist_ok=True)
        (features / str(layer) / f"{index}.json").write_text(json.dumps(_feature_card(layer, index)))
    app = create_app(data, features=JsonDirFeatureProvider(features))
    with BackgroundServer(app) as server:
        yield {"url": server.url, "data": data, "graph": graph, "labels": labels,
               "long_tokens": LONG_TOKENS, "long_logit": LONG_LOGIT}


@contextmanager
def watched_page(browser):
    """A fresh 1400x880 page and the list its page errors and console errors are collected into,
    so that a fixture can decide which of them fail the test once the page is closed."""
    context = browser.new_context(viewport={"width": 1400, "height": 880})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    try:
        yield page, errors
    finally:
        context.close()


@pytest.fixture()
def page(browser):
    with watched_page(browser) as (page, errors):
        yield page
    assert not errors, f"browser errors: {errors}"


@pytest.fixture()
def shot():
    """``shot(page, name)`` saves a screenshot to test-artifacts/<name>.png (gitignored)."""

    def take(page, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        page.screenshot(path=str(path))
        return path

    return take
