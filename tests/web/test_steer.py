"""The Steer panel in Chromium: pin a feature, set it to a big value, run, and read the before/after
tokens and continuations the panel renders, checked against direct `intervene` / `generate` calls."""

from __future__ import annotations

import json

import pytest

import circuit_atlas
from circuit_atlas.graph import to_graph_json
from circuit_atlas.interventions import Intervention, generate, intervene
from circuit_atlas.models.tiny import tiny_language_model
from circuit_atlas.server.app import create_app
from circuit_atlas.graph.bundle import write_graph_bundle
from circuit_atlas.server.json_graph import UNVERIFIED_WARNING
from circuit_atlas.server.runner import BackgroundServer
from circuit_atlas.transcoders.random import random_transcoders

pytestmark = pytest.mark.browser

PROMPT = "the capital of the state containing Dallas is"


@pytest.fixture(scope="module")
def steer_site(tmp_path_factory):
    lm = tiny_language_model("llama", seed=3, n_layers=2, d_model=32)
    tc = random_transcoders("plt", n_layers=2, d_model=32, n_features=32, seed=5)
    model = circuit_atlas.load(lm, tc)
    graph = circuit_atlas.attribute(model, PROMPT, progress=False)
    data = tmp_path_factory.mktemp("steer-web")
    write_graph_bundle(graph, data, "dallas")
    with BackgroundServer(create_app(data, model=model)) as server:
        yield {"url": server.url, "model": model, "graph": graph, "data": data}


def _open(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=15_000)


def _show(text: str) -> str:
    """The web app's showToken: newlines and tabs made visible."""
    return text.replace("\n", "⏎").replace("\t", "→").replace("\r", "↵")


def test_steer_a_pinned_feature(page, steer_site, shot) -> None:
    model, graph = steer_site["model"], steer_site["graph"]
    _open(page, f"{steer_site['url']}?graph=dallas")
    # The strongest feature at the last position: steering it moves the next token most.
    node_id = page.evaluate(
        """() => window.__atlas.state.doc.nodes
              .filter(n => n.feature_type === 'cross layer transcoder')
              .sort((a, b) => b.ctx_idx - a.ctx_idx || b.activation - a.activation)[0].node_id"""
    )
    pos = page.evaluate("id => window.__atlas.canvas.screenPosition(id)", node_id)
    page.keyboard.down("Control")
    page.mouse.click(pos["x"], pos["y"])
    page.keyboard.up("Control")
    page.wait_for_selector("[data-testid=pinned-item]")

    page.click("[data-testid=steer-open]")
    row = page.locator(f"[data-testid=steer-row][data-item-id='{node_id}']")
    row.wait_for()
    assert page.locator("[data-testid=steer-unavailable]").count() == 0
    row.locator("[data-testid=steer-op]").select_option("set")
    row.locator("[data-testid=steer-value]").fill("60")
    row.locator("[data-testid=steer-positions]").select_option("from_node")
    page.fill("[data-testid=steer-max-new-tokens]", "8")
    page.click("[data-testid=steer-run]")
    page.wait_for_selector("[data-testid=steer-results] .tok-row", timeout=20_000)

    index = graph.node_index(node_id)
    layer, position, feature = (int(v) for v in graph.feature_coords[index])
    steer = [Intervention(layer, slice(position, None), feature, value=60.0)]
    direct = intervene(model, graph.input_ids, steer, top_k=10)
    continuation = generate(model, graph.input_ids, steer, 8)

    def column(name: str) -> list[str]:
        return page.eval_on_selector_all(
            f"[data-testid=steer-top-{name}] .tok-text", "els => els.map(e => e.textContent)"
        )

    assert column("before") == [_show(t.token) for t in direct.top_before]
    assert column("after") == [_show(t.token) for t in direct.top_after]
    assert column("before") != column("after")
    probs = page.eval_on_selector_all(
        "[data-testid=steer-top-after] .tok-prob", "els => els.map(e => e.textContent)"
    )
    assert probs == [f"{t.prob:.3f}" for t in direct.top_after]
    gen_before = page.inner_text("[data-testid=steer-gen-before] .gen-text")
    gen_after = page.inner_text("[data-testid=steer-gen-after] .gen-text")
    assert gen_before == _show(continuation.default.text)
    assert gen_after == _show(continuation.steered.text)
    assert gen_before != gen_after
    assert "null" not in page.inner_text("[data-testid=steer-panel]")
    shot(page, "explorer-steer")

    # Grouping the pin with another feature turns the two rows into one supernode row.
    other = page.evaluate(
        """id => window.__atlas.state.doc.nodes
              .filter(n => n.feature_type === 'cross layer transcoder' && n.node_id !== id)[0].node_id""",
        node_id,
    )
    page.evaluate("id => window.__atlas.togglePin(id)", other)
    page.wait_for_selector(f"[data-testid=steer-row][data-item-id='{other}']")
    assert page.locator("[data-testid=steer-row]").count() == 2
    page.evaluate("ids => window.__atlas.createSupernode(ids)", [node_id, other])
    page.wait_for_selector("[data-testid=steer-row].supernode")
    assert page.locator("[data-testid=steer-row]").count() == 1
    assert "2 features" in page.inner_text("[data-testid=steer-row]")


def test_steer_panel_explains_a_server_without_model(page, site, shot) -> None:
    _open(page, f"{site['url']}?graph=demo")
    page.click("[data-testid=steer-open]")
    notice = page.locator("[data-testid=steer-unavailable]")
    notice.wait_for()
    assert "--model" in notice.inner_text() and "--transcoders" in notice.inner_text()
    assert page.is_disabled("[data-testid=steer-run]")
    shot(page, "explorer-steer-no-model")
    page.click("[data-testid=steer-close]")
    assert page.locator("[data-testid=steer-panel]").is_hidden()


def test_steer_a_json_only_graph_shows_the_warning(page, steer_site, shot) -> None:
    """A loose JSON file whose scan names only the model (Neuronpedia style) can be steered, and
    the panel says that its feature indices are taken on trust."""
    model, graph = steer_site["model"], steer_site["graph"]
    doc = to_graph_json(graph, "dallas-json", 0.8, 0.98, scan=model.lm.name)
    (steer_site["data"] / "dallas-json.json").write_text(json.dumps(doc))
    _open(page, f"{steer_site['url']}?graph=dallas-json")
    page.click("[data-testid=steer-open]")
    warning = page.locator("[data-testid=steer-warning]")
    warning.wait_for()
    assert warning.inner_text() == f"Warning: {UNVERIFIED_WARNING[0].upper()}{UNVERIFIED_WARNING[1:]}."
    assert page.locator("[data-testid=steer-unavailable]").count() == 0
    shot(page, "explorer-steer-json-warning")
