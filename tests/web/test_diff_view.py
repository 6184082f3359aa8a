"""The diff view and the supernode suggestions panel, clicked through in Chromium on demo-model
graphs (two-hop questions about dallas, oakland and houston, written as `trace --prompts` writes
them, their typical circuit, and a JSON-only copy), served with the demo's feature store."""

from __future__ import annotations

import json
import urllib.request
from urllib.parse import parse_qs, quote, urlparse

import pytest

from circuit_atlas.demo.bundle import demo_features_path
from circuit_atlas.features import FeatureStore
from circuit_atlas.graph import to_graph_json
from circuit_atlas.server.app import create_app
from circuit_atlas.server.runner import BackgroundServer

from .conftest import watched_page

from ..city_graphs import write_city_bundles

pytestmark = pytest.mark.browser

TEXAS_KEY = "feature L0 #479 @8:8"  # the texas region feature at "is" (tests/demo/test_compare_aggregate.py)


@pytest.fixture(scope="module")
def cities(tmp_path_factory, demo_model):
    root = tmp_path_factory.mktemp("cities")
    graphs = write_city_bundles(demo_model, root / "data", aggregate="typical-city")
    doc = to_graph_json(graphs["dallas"], "jsonly", 0.8, 0.98)
    (root / "data" / "jsonly.json").write_text(json.dumps(doc))
    with FeatureStore(demo_features_path("clt")) as store:
        with BackgroundServer(create_app(root / "data", features=store)) as server:
            yield {"url": server.url}


@pytest.fixture()
def refused_page(browser):
    """A page on which the only expected browser errors are the console's notes of 409 and 404
    answers (Chromium logs every failed fetch); any other error still fails the test."""
    with watched_page(browser) as (page, errors):
        yield page
    unexpected = [e for e in errors if "status of 409" not in e and "status of 404" not in e]
    assert not unexpected and errors, f"browser errors: {errors}"


def _query(page) -> dict:
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


def _get(url: str) -> dict:
    with urllib.request.urlopen(url) as answer:
        return json.load(answer)


def test_pick_two_graphs_in_the_browser_and_read_their_diff(cities, page, shot) -> None:
    page.goto(cities["url"])
    rows = page.get_by_test_id("graph-row")
    rows.first.wait_for()
    assert page.locator("[data-graph-id=jsonly] [data-testid=compare-pick]").is_disabled()
    assert page.get_by_test_id("compare-selected").is_disabled()
    page.locator("[data-graph-id=dallas] [data-testid=compare-pick]").check()
    page.locator("[data-graph-id=oakland] [data-testid=compare-pick]").check()
    page.get_by_test_id("compare-selected").click()
    page.locator("[data-testid=diff-node]").first.wait_for()
    assert _query(page)["diff"] == "dallas,oakland"
    statuses = set(page.locator("[data-testid=diff-node]").evaluate_all("els => els.map(e => e.dataset.status)"))
    assert statuses == {"both", "only a", "only b"}
    assert "austin" in page.get_by_test_id("diff-target").inner_text()
    assert "sacramento" in page.get_by_test_id("diff-target").inner_text()
    # the texas feature disappears: first row of its table; clicking it selects it everywhere
    first = page.get_by_test_id("diff-row-disappear").first
    assert first.get_attribute("data-key") == TEXAS_KEY and "texas" in first.inner_text()
    first.click()
    selected = page.get_by_test_id("diff-selected")
    assert "L0 #479" in selected.inner_text() and "absent" in selected.inner_text()
    assert page.locator(f"[data-testid=diff-node][data-key='{TEXAS_KEY}']").get_attribute("class").endswith("selected")
    assert _query(page)["diffNode"] == TEXAS_KEY
    link = parse_qs(urlparse(page.get_by_test_id("diff-open-a").get_attribute("href")).query)
    assert link["graph"] == ["dallas"] and link["clickedId"] == ["0_479_8"]
    assert page.get_by_test_id("diff-row-appear").count() >= 1
    assert page.get_by_test_id("diff-table-edges").locator("tbody tr").count() >= 1
    shot(page, "diff-view")
    # the link opens A's graph with the node selected
    page.get_by_test_id("diff-open-a").click()
    page.wait_for_selector("body[data-mode=graph][data-ready='1']")
    assert _query(page)["clickedId"] == "0_479_8"


def test_a_diff_link_reopens_the_view_and_its_controls_rewrite_it(cities, page) -> None:
    page.goto(f"{cities['url']}?diff=dallas,oakland&diffNode={quote(TEXAS_KEY)}&colour=change&pruningThreshold=0.9")
    page.get_by_test_id("diff-selected").wait_for()
    assert page.get_by_test_id("diff-colour").input_value() == "change"
    assert page.get_by_test_id("diff-threshold").input_value() == "0.9"
    wide = page.locator("[data-testid=diff-node]").count()
    page.keyboard.press("Escape")  # clears the selection, keeps the view
    page.wait_for_function("!new URLSearchParams(location.search).has('diffNode')")
    assert _query(page)["diff"] == "dallas,oakland" and page.get_by_test_id("diff-selected").count() == 0
    page.get_by_test_id("diff-swap").click()
    page.wait_for_function("new URLSearchParams(location.search).get('diff') === 'oakland,dallas'")
    page.wait_for_function("document.querySelector('[data-testid=diff-target]')?.innerText.startsWith('Target “sacramento”')")
    page.locator("[data-testid=diff-row-appear]").first.wait_for()
    assert page.get_by_test_id("diff-row-appear").first.get_attribute("data-key") == TEXAS_KEY  # now B's
    page.get_by_test_id("diff-b").select_option("houston")
    page.wait_for_function("new URLSearchParams(location.search).get('diff') === 'oakland,houston'")
    page.locator("[data-testid=diff-node]").first.wait_for()
    page.get_by_test_id("diff-threshold").fill("0.5")
    page.get_by_test_id("diff-threshold").dispatch_event("change")
    page.wait_for_function("new URLSearchParams(location.search).get('pruningThreshold') === '0.5'")
    page.wait_for_function(f"document.querySelectorAll('[data-testid=diff-node]').length < {wide}")


def test_a_graph_view_opens_the_diff_with_another_graph(cities, page) -> None:
    page.goto(f"{cities['url']}?graph=oakland")
    page.wait_for_selector("body[data-mode=graph][data-ready='1']")
    page.get_by_test_id("compare-open").click()
    page.locator("[data-testid=diff-node]").first.wait_for()
    a, b = _query(page)["diff"].split(",")
    assert a == "oakland" and b in {"dallas", "houston"}  # a graph of as many tokens
    assert page.get_by_test_id("diff-a").input_value() == "oakland"
    page.goto(f"{cities['url']}?graph=jsonly")
    page.wait_for_selector("body[data-mode=graph][data-ready='1']")
    assert page.get_by_test_id("compare-open").is_disabled()


def test_a_json_only_graph_cannot_be_compared_and_says_why(cities, refused_page) -> None:
    page = refused_page
    page.goto(f"{cities['url']}?diff=dallas,jsonly")
    message = page.get_by_test_id("diff-message")
    message.wait_for()
    page.wait_for_function("document.querySelector('[data-testid=diff-message]').classList.contains('error')")
    assert "graph-JSON" in message.inner_text() and "other_graph_id" in message.inner_text()
    page.goto(f"{cities['url']}?diff=nowhere,dallas")
    page.wait_for_function("document.querySelector('[data-testid=diff-message]')?.innerText.startsWith('graph_id: no graph')")


def test_the_typical_circuit_and_batch_bundles_are_listed_and_open(cities, page) -> None:
    page.goto(cities["url"])
    page.get_by_test_id("graph-row").first.wait_for()
    ids = set(page.get_by_test_id("graph-row").evaluate_all("els => els.map(e => e.dataset.graphId)"))
    assert {"dallas", "oakland", "houston", "typical-city", "jsonly"} <= ids
    page.locator("[data-graph-id=typical-city] [data-testid=graph-link]").click()
    page.wait_for_selector("body[data-mode=graph][data-ready='1']")
    assert int(page.evaluate("document.body.dataset.nodeCount")) > 0
    assert "typical circuit of 3 graphs" in page.locator("#prompt").inner_text()


def test_accept_edit_and_reject_supernode_suggestions(cities, page) -> None:
    page.goto(f"{cities['url']}?graph=dallas&pruningThreshold=0.9")
    page.wait_for_selector("body[data-mode=graph][data-ready='1']")
    page.get_by_test_id("suggest-similarity").fill("0.5")
    page.get_by_test_id("suggest-similarity").dispatch_event("change")
    page.get_by_test_id("suggest-supernodes").click()
    cards = page.get_by_test_id("suggestion")
    cards.first.wait_for()
    assert cards.count() == 2
    texas, other = cards.nth(0), cards.nth(1)
    assert texas.get_by_test_id("suggestion-name").input_value() == "texas"
    members = texas.locator(".suggestion-member").evaluate_all("els => els.map(e => e.dataset.nodeId)")
    assert len(members) == 3 and "0_479_8" in members
    # edit: rename, leave the last member out, accept
    texas.get_by_test_id("suggestion-name").fill("texas region")
    texas.get_by_test_id("suggestion-remove-member").nth(2).click()
    texas = page.get_by_test_id("suggestion").nth(0)
    assert texas.locator(".suggestion-member").count() == 2
    texas.get_by_test_id("suggestion-accept").click()
    texas.get_by_test_id("suggestion-accepted").wait_for()
    page.wait_for_function("document.querySelector('[data-testid=supernode-name]')?.value === 'texas region'")
    saved = _get(f"{cities['url']}api/graphs/dallas/annotations")["supernodes"]
    assert [(sn["name"], sorted(sn["members"])) for sn in saved.values()] == [("texas region", sorted(members[:2]))]
    assert set(members[:2]) <= set(_query(page)["pinnedIds"].split(","))
    # reject the other; it can be shown and restored
    other_name = other.get_by_test_id("suggestion-name").input_value()
    other.get_by_test_id("suggestion-reject").click()
    page.wait_for_function("document.querySelectorAll('[data-testid=suggestion]').length === 1")
    page.get_by_test_id("show-rejected").click()
    page.get_by_test_id("suggestion-restore").wait_for()
    # both stay handled when the graph is opened again
    page.reload()
    page.wait_for_selector("body[data-mode=graph][data-ready='1']")
    page.get_by_test_id("suggest-similarity").fill("0.5")
    page.get_by_test_id("suggest-similarity").dispatch_event("change")
    page.get_by_test_id("suggest-supernodes").click()
    page.get_by_test_id("suggestion-accepted").wait_for()
    assert page.get_by_test_id("suggestion").count() == 1
    assert "1 rejected" in page.get_by_test_id("show-rejected").inner_text()
    page.get_by_test_id("show-rejected").click()
    page.get_by_test_id("suggestion-restore").click()
    page.wait_for_function("document.querySelectorAll('[data-testid=suggestion-reject]').length === 1")
    assert page.get_by_test_id("suggestion").nth(1).get_by_test_id("suggestion-name").input_value() == other_name


def test_suggestions_of_a_json_only_graph_say_why_not(cities, page) -> None:
    page.goto(f"{cities['url']}?graph=jsonly")
    page.wait_for_selector("body[data-mode=graph][data-ready='1']")
    assert page.get_by_test_id("suggest-supernodes").is_disabled()
    assert "native graph" in page.get_by_test_id("suggestions-unavailable").inner_text()
