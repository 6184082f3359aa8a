"""Demo-model graphs for the comparison and suggestion tests of the server and the web app:
two-hop questions about cities, written as bundles the way `trace --prompts` writes them
(`write_graph_bundle(graph, OUT, slug)` per line), plus their aggregate ("typical circuit")."""

from __future__ import annotations

from pathlib import Path

import circuit_atlas
from circuit_atlas.demo import toyworld
from circuit_atlas.graph import aggregate_graphs, write_graph_bundle

CITIES = ("dallas", "oakland", "houston")


def city_prompt(city: str) -> str:
    return toyworld.TWO_HOP_FRAME.format(city=city)


def write_city_bundles(model, out: Path, cities=CITIES, *, aggregate: str | None = None) -> dict:
    """One bundle per city under `out` (slug = city); with `aggregate`, their typical circuit as
    a bundle of that slug too. Returns the graphs by slug."""
    graphs = {city: circuit_atlas.attribute(model, city_prompt(city), progress=False) for city in cities}
    for city, graph in graphs.items():
        write_graph_bundle(graph, out, city)
    if aggregate is not None:
        typical = aggregate_graphs(list(graphs.values()), names=list(graphs)).graph
        write_graph_bundle(typical, out, aggregate)
        graphs[aggregate] = typical
    return graphs
