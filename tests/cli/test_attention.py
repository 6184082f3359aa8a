"""`circuit-atlas attention` end to end on a bundle traced with the bundled demo model."""

from __future__ import annotations

import json

import pytest

import circuit_atlas
from circuit_atlas.cli.main import build_parser, main
from circuit_atlas.graph import GraphAttention, read_graph_json
from circuit_atlas.graph.bundle import write_graph_bundle

PROMPT = "the capital of the region containing dallas is"


@pytest.fixture(scope="module")
def demo_model():
    return circuit_atlas.load("demo", "demo")


@pytest.fixture
def bundle(demo_model, tmp_path):
    graph = circuit_atlas.attribute(demo_model, PROMPT, progress=False)
    return graph, write_graph_bundle(graph, tmp_path, "dallas")


def _strong_edge(graph):
    from circuit_atlas.graph import prune
    from circuit_atlas.graph.attention import strongest_cross_position_edges

    source, target, _ = strongest_cross_position_edges(graph, prune(graph), 1)[0]
    return graph.node_id(source), graph.node_id(target)


def test_help_teaches(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["attention", "--help"])
    text = capsys.readouterr().out
    for phrase in ("--source", "--target", "--head L.H", "--precompute", "query-side term",
                   "last hop that changes position", "examples:"):
        assert phrase in text


def test_edge_heads_and_head_explanation(bundle, capsys):
    graph, folder = bundle
    source, target = _strong_edge(graph)
    assert main(["attention", str(folder), "--source", source, "--target", target]) == 0
    out = capsys.readouterr().out
    assert f"edge {source}" in out and "L0.H" in out
    assert main(["attention", str(folder), "--source", source, "--target", target, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert abs(data["total"] - data["edge"]) <= 1e-4 * abs(data["edge"])
    top = data["heads"][0]
    head = f"{top['layer']}.{top['head']}"
    assert main(["attention", str(folder), "--source", source, "--target", target, "--head", head]) == 0
    out = capsys.readouterr().out
    assert f"head L{top['layer']}.H{top['head']}: query {top['query_position']}" in out
    assert "query-side term" in out and "attention weight" in out


def test_precompute_stores_beside_the_graph_and_is_read_back(bundle, capsys):
    graph, folder = bundle
    assert main(["attention", str(folder), "--precompute", "--edges", "3", "--heads-per-edge", "2"]) == 0
    assert "wrote" in capsys.readouterr().out
    stored = GraphAttention.load(folder)
    assert len(stored.edges) == 3
    assert read_graph_json(folder / "dallas.json")["attention"]["edges"]
    assert main(["attention", str(folder)]) == 0
    listing = capsys.readouterr().out
    assert listing.count("edge ") == 3
    edge = stored.edges[0]
    row = edge["heads"][0]
    args = ["attention", str(folder), "--source", edge["source"], "--target", edge["target"],
            "--head", f"{row['layer']}.{row['head']}", "--json", "--model", "no/such-model"]
    # answered from the stored files: the (unloadable) model is never needed
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["score"] == stored.explanations[row["explanation"]].meta["score"]
    # a re-export keeps the attention object
    assert main(["export", str(folder)]) == 0
    assert "attention" in read_graph_json(folder / "dallas.json")


@pytest.mark.parametrize("extra, message", [
    (["--source", "E_1_1"], "give both --source and --target"),
    (["--source", "X", "--target", "Y", "--head", "a.b"], "--head must be LAYER.HEAD"),
    (["--head", "0.0"], "--head explains a head of an edge"),
    (["--precompute", "--edges", "0"], "--edges must be at least 1"),
    ([], "holds no stored attention explanations"),
    (["--source", "E_99999_1", "--target", "TARGET"], "'E_99999_1' is not a node of this graph"),
    (["--source", "SOURCE", "--target", "TARGET", "--head", "0.9"], "head 9 is out of range 0..3"),
    (["--source", "SOURCE", "--target", "TARGET", "--head", "7.0"], "layer 7 is out of range 0..3"),
    (["--source", "SOURCE", "--target", "TARGET", "--transcoders", "demo-plt"],
     "traced with another model or transcoders"),
])
def test_bad_input_is_one_line(bundle, capsys, extra, message):
    graph, folder = bundle
    source, target = _strong_edge(graph)
    extra = [source if a == "SOURCE" else target if a == "TARGET" else a for a in extra]
    assert main(["attention", str(folder), *extra]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
