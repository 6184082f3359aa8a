"""The one interface the explorer and the steerer use for a graph, whichever files it has.

A graph in the data folder is either a native bundle (`native.NativeGraph`: the full `Graph`,
pruned on demand) or a graph-JSON file only (`json_graph.JsonGraph`: a pruned view as written by
us, circuit-tracer or Neuronpedia). Both implement `ServedGraph`, so `explorer.py`, `steer.py`
and the routes never ask which kind they hold. Steering needs a little more of a graph
(`Steerable`): its token ids and the coordinates of its feature nodes, checked against the loaded
model; `ServedGraph.steerable(model)` provides it or refuses with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

import torch

from circuit_atlas.errors import CircuitAtlasError

Source = Literal["native", "json"]
Annotations = Mapping[str, Any]


class NodeNotFound(CircuitAtlasError):
    """The requested node id is not part of the graph (or of the current view)."""


class ScoresUnavailable(CircuitAtlasError):
    """Scores need the native graph, which this graph lacks."""


class NotSteerable(CircuitAtlasError):
    """This graph cannot be steered with the loaded model; the message says why."""


class Steerable(Protocol):
    """What steering needs from a graph that was checked against the loaded model.

    - `input_ids` int64 [P]: the prompt's token ids (BOS included);
    - `warning`: set when steering is allowed but the files cannot prove the graph was traced
      with the loaded transcoders;
    - `tokens_from`: where the token ids came from when they had to be recovered (JSON files),
      else None.
    """

    input_ids: torch.Tensor
    warning: str | None
    tokens_from: str | None

    def node_kind(self, node_id: str) -> str | None:
        """`feature` / `error` / `token` / `logit` / another type name; None for unknown ids."""
        ...

    def feature_coords(self, node_id: str) -> tuple[int, int, int]:
        """(layer, position, feature) of a feature node (`node_kind(node_id) == "feature"`)."""
        ...


class ServedGraph(Protocol):
    """One graph of the data folder, as the explorer's operations see it.

    `graph_id` is the catalog's id, `slug` the graph's own name; `label` names it in messages.
    `checks_with_tokenizer`: `steerable` tokenises (JSON files), so the steerer runs it under
    the model lock.
    """

    graph_id: str
    slug: str
    source: Source
    label: str
    checks_with_tokenizer: bool

    def view(self, node_threshold: float, edge_threshold: float) -> tuple[dict[str, Any], float | None]:
        """The pruned graph JSON at the thresholds, and the edge threshold actually applied
        (None when only influence values can filter, as for JSON files)."""
        ...

    def full_neighbourhood(self, node_id: str, annotations: Annotations,
                           limit: int | None) -> dict[str, Any] | None:
        """A node's every edge in the unpruned graph (the whole file for JSON), strongest first;
        None when the node is unknown."""
        ...

    def subgraph(self, node_ids: Sequence[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
        """(nodes, links among them, ids not found), independent of any threshold."""
        ...

    def scores(self, node_ids: Sequence[str] | None) -> dict[str, Any]:
        """Replacement and completeness of the graph or of a subgraph; `ScoresUnavailable` when
        the files cannot give them."""
        ...

    def steerable(self, model: Any) -> Steerable:
        """This graph checked against `model` (a `ReplacementModel`), or `NotSteerable`."""
        ...
