"""What a user asks for: `Intervention` (one feature, or several, at some positions) and
`Supernode` (a named set of features treated as one), and their checks against a model.

An intervention names the desired **post-activation** value of a feature: set it (`value`),
multiply its current value (`scale`) or remove it (`ablate`, value 0). Internally every one of
these is `target = current · mul + add`, so one vectorised code path applies all three.

Positions: an int (negative counts from the end of the prompt), a slice of absolute positions
(negative bounds count from the end of the prompt; during generation a slice also covers the
generated positions it names, and `stop=None` makes it *open-ended*), or None for every position.
Zeroed positions (the BOS position(s), where transcoder features are never read) are skipped by
slices and None and refused when named explicitly.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from circuit_atlas.errors import InterventionError

Position = int | slice | None
OPS = ("set", "scale", "ablate")


def _is_int(value) -> bool:
    """Python, NumPy and 0-d tensor integers count; bools do not."""
    if isinstance(value, bool):
        return False
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not value.is_floating_point() and value.dtype != torch.bool
    return isinstance(value, numbers.Integral)


def _finite_number(value, name: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InterventionError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InterventionError(f"{name} must be a finite number, got {value!r}")
    return value


def _check_position(position) -> Position:
    """The position with integer-likes made Python ints (so it prints and hashes simply)."""
    if position is None:
        return None
    if _is_int(position):
        return int(position)
    if isinstance(position, slice):
        bounds = []
        for part in ("start", "stop", "step"):
            bound = getattr(position, part)
            if bound is not None and not _is_int(bound):
                raise InterventionError(f"position slice {part} must be an int or None, got {bound!r}")
            bounds.append(None if bound is None else int(bound))
        if bounds[2] is not None and bounds[2] < 1:
            raise InterventionError(f"position slice step must be at least 1, got {bounds[2]}")
        return slice(*bounds)
    raise InterventionError(f"position must be an int, a slice or None (all positions), got {position!r}")


def _features_tuple(feature) -> tuple[int, ...]:
    if isinstance(feature, torch.Tensor):
        feature = feature.reshape(-1).tolist()
    if _is_int(feature):
        return (int(feature),)
    if isinstance(feature, Iterable) and not isinstance(feature, (str, bytes)):
        values = tuple(feature)
        if values and all(_is_int(f) for f in values):
            return tuple(int(f) for f in values)
    raise InterventionError(f"feature must be an int or a non-empty list of ints, got {feature!r}")


def _operation(value, scale, ablate) -> tuple[str, float, float]:
    """(op, mul, add) from the three mutually exclusive ways of saying what to do."""
    given = [name for name, on in (("value", value is not None), ("scale", scale is not None),
                                   ("ablate", bool(ablate))) if on]
    if len(given) != 1:
        raise InterventionError(
            "an intervention needs exactly one of value=..., scale=... or ablate=True"
            + (f"; got {', '.join(given)}" if given else "")
        )
    if value is not None:
        return "set", 0.0, _finite_number(value, "value")
    if scale is not None:
        return "scale", _finite_number(scale, "scale"), 0.0
    return "ablate", 0.0, 0.0


@dataclass(frozen=True)
class Intervention:
    """Set, scale or ablate feature(s) `feature` of `layer` at `position`.

    `value` is the desired post-activation value (the decoder then writes `value − current` times
    its decoder vectors, into every layer it writes to for CLTs); `scale` multiplies the current
    activation; `ablate=True` sets it to 0. Exactly one of the three must be given.
    """

    layer: int
    position: Position
    feature: int | Sequence[int]
    value: float | None = None
    scale: float | None = None
    ablate: bool = False
    features: tuple[int, ...] = field(init=False, repr=False)
    op: str = field(init=False, repr=False)
    mul: float = field(init=False, repr=False)
    add: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not _is_int(self.layer):
            raise InterventionError(f"layer must be an int, got {self.layer!r}")
        object.__setattr__(self, "layer", int(self.layer))
        object.__setattr__(self, "position", _check_position(self.position))
        features = _features_tuple(self.feature)
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "feature", features[0] if _is_int(self.feature) else features)
        op, mul, add = _operation(self.value, self.scale, self.ablate)
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "mul", mul)
        object.__setattr__(self, "add", add)

    def to_dict(self) -> dict:
        """JSON form: position is an int, null (all) or [start, stop] (null = open end)."""
        position = self.position
        if isinstance(position, slice):
            position = [position.start, position.stop] + ([position.step] if position.step not in (None, 1) else [])
        feature = self.feature if isinstance(self.feature, int) else list(self.features)
        out = {"layer": self.layer, "position": position, "feature": feature}
        out.update({"set": {"value": self.add}, "scale": {"scale": self.mul}, "ablate": {"ablate": True}}[self.op])
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Intervention":
        """Inverse of `to_dict` (what a web client sends); errors name the offending key."""
        if not isinstance(data, dict):
            raise InterventionError(f"an intervention must be a JSON object, got {data!r}")
        unknown = set(data) - {"layer", "position", "feature", "value", "scale", "ablate"}
        if unknown:
            raise InterventionError(f"unknown intervention key(s): {sorted(unknown)}")
        for key in ("layer", "feature"):
            if key not in data:
                raise InterventionError(f"intervention {data!r} has no {key!r}")
        position = data.get("position")
        if isinstance(position, list):
            if not 1 <= len(position) <= 3:
                raise InterventionError(
                    f"position range must be [start, stop] or [start, stop, step], got {position!r}"
                )
            position = slice(*position)
        return cls(data["layer"], position, data["feature"], value=data.get("value"),
                   scale=data.get("scale"), ablate=bool(data.get("ablate", False)))

    def describe(self) -> str:
        feats = ",".join(str(f) for f in self.features)
        what = {"set": f"= {self.add:g}", "scale": f"× {self.mul:g}", "ablate": "ablated"}[self.op]
        return f"L{self.layer} @{format_position(self.position)} #{feats} {what}"


@dataclass(frozen=True)
class Supernode:
    """Several features, given as `(layer, position, feature)` triples, intervened on together.

    The operation (`value`, `scale` or `ablate`) applies to every member, e.g. the paper's
    "scale the 'Texas' supernode by −2". `name` is only for display.
    """

    members: Sequence[tuple[int, Position, int]]
    value: float | None = None
    scale: float | None = None
    ablate: bool = False
    name: str | None = None

    def __post_init__(self) -> None:
        try:
            members = tuple(tuple(m) for m in self.members)
        except TypeError:
            raise InterventionError(
                f"supernode members must be (layer, position, feature) triples, got {self.members!r}"
            ) from None
        if not members:
            raise InterventionError(f"supernode {self.name or ''!r} has no members")
        for member in members:
            if len(member) != 3:
                raise InterventionError(
                    f"supernode members must be (layer, position, feature) triples, got {member!r}"
                )
        _operation(self.value, self.scale, self.ablate)
        checked = [Intervention(*member, value=self.value, scale=self.scale, ablate=self.ablate)
                   for member in members]
        object.__setattr__(self, "members", tuple((i.layer, i.position, i.feature) for i in checked))

    def interventions(self) -> list[Intervention]:
        return [
            Intervention(layer, position, feature, value=self.value, scale=self.scale, ablate=self.ablate)
            for layer, position, feature in self.members
        ]

    @classmethod
    def from_graph(cls, graph, nodes: Iterable[int | str], *, value: float | None = None,
                   scale: float | None = None, ablate: bool = False, name: str | None = None) -> "Supernode":
        """A supernode of graph feature nodes, named by dense index or node id (`"3_1234_5"`)."""
        triples = [graph_feature(graph, node) for node in nodes]
        return cls(triples, value=value, scale=scale, ablate=ablate, name=name)


def graph_feature(graph, node: int | str) -> tuple[int, int, int]:
    """(layer, position, feature) of a feature node of `graph`, by dense index or node id."""
    if isinstance(node, str):
        try:
            index = graph.node_index(node)
        except KeyError:
            raise InterventionError(f"the graph has no node with id {node!r}") from None
    elif _is_int(node):
        index = int(node)
    else:
        raise InterventionError(f"graph nodes are named by dense index or node id, got {node!r}")
    if not 0 <= index < graph.n_nodes:
        raise InterventionError(f"node index {index} is outside the graph's 0..{graph.n_nodes - 1}")
    kind = graph.node_kind(index)
    if kind != "feature":
        raise InterventionError(
            f"node {graph.node_id(index)!r} is a {kind} node; only feature nodes can be intervened on"
        )
    layer, position, feature = (int(v) for v in graph.feature_coords[index])
    return layer, position, feature


def flatten(interventions: Iterable[Intervention | Supernode]) -> list[Intervention]:
    """Supernodes expanded into their members' interventions."""
    if isinstance(interventions, (Intervention, Supernode)):
        interventions = [interventions]
    flat: list[Intervention] = []
    for item in interventions:
        if isinstance(item, Supernode):
            flat.extend(item.interventions())
        elif isinstance(item, Intervention):
            flat.append(item)
        else:
            raise InterventionError(f"expected Intervention or Supernode objects, got {item!r}")
    return flat


def format_position(position: Position) -> str:
    if position is None:
        return "*"
    if isinstance(position, slice):
        text = f"{'' if position.start is None else position.start}..{'' if position.stop is None else position.stop}"
        return text + (f"/{position.step}" if position.step not in (None, 1) else "")
    return str(position)


# ---------------------------------------------------------------------- positions
@dataclass(frozen=True)
class PositionRule:
    """A position selector made absolute against one prompt: `[start, stop)` with `step`,
    `stop=None` meaning open-ended (it continues into generated positions)."""

    start: int
    stop: int | None
    step: int
    explicit: bool  # named as a single int: a zeroed position is an error, not skipped

    def covers(self, lo: int, hi: int, n_zeroed: int) -> list[int]:
        """Selected absolute positions in `[lo, hi)`, zeroed positions excluded."""
        first = max(lo, self.start, n_zeroed)
        last = hi if self.stop is None else min(hi, self.stop)
        if first >= last:
            return []
        offset = (first - self.start) % self.step
        if offset:
            first += self.step - offset
        return list(range(first, last, self.step))

    @property
    def open_ended(self) -> bool:
        return self.stop is None


def position_rule(position: Position, prompt_length: int, n_zeroed: int, where: str) -> PositionRule:
    """Resolve negative indices against the prompt and check an explicit position exists."""
    if position is None:
        return PositionRule(0, None, 1, False)
    if isinstance(position, slice):
        def absolute(bound: int | None) -> int | None:
            return None if bound is None else (bound + prompt_length if bound < 0 else bound)

        start = absolute(position.start) or 0
        return PositionRule(max(start, 0), absolute(position.stop), position.step or 1, False)
    index = position + prompt_length if position < 0 else position
    if not 0 <= index < prompt_length:
        raise InterventionError(
            f"{where}: position {position} is out of range for a prompt of {prompt_length} tokens "
            f"(valid: {-prompt_length}..{prompt_length - 1})"
        )
    if index < n_zeroed:
        raise InterventionError(
            f"{where}: position {index} is a zeroed position (the first {n_zeroed} token(s)); "
            "transcoder features are not read there"
        )
    return PositionRule(index, index + 1, 1, True)


# ---------------------------------------------------------------------- checked against a model
@dataclass(frozen=True)
class CheckedIntervention:
    """An `Intervention` whose layer, features and positions were checked against a model."""

    source: Intervention
    layer: int
    features: torch.Tensor  # int64 [n_feat]
    rule: PositionRule
    mul: float
    add: float


def check_interventions(
    interventions: Iterable[Intervention | Supernode],
    *,
    n_layers: int,
    n_features: int,
    prompt_length: int,
    n_zeroed: int,
    total_length: int | None = None,
) -> list[CheckedIntervention]:
    """Validate every intervention against the model and prompt; refuse overlapping targets.

    `total_length` (generation: prompt plus new tokens; default the prompt length) is the range of
    positions the interventions may act on. A selection must cover at least one of them.
    """
    total = prompt_length if total_length is None else total_length
    checked: list[CheckedIntervention] = []
    claimed: dict[tuple[int, int, int], str] = {}
    for item in flatten(interventions):
        where = f"intervention {item.describe()}"
        if not 0 <= item.layer < n_layers:
            raise InterventionError(f"{where}: layer {item.layer} is out of range 0..{n_layers - 1}")
        bad = [f for f in item.features if not 0 <= f < n_features]
        if bad:
            raise InterventionError(
                f"{where}: feature {bad[0]} is out of range 0..{n_features - 1} (n_features={n_features})"
            )
        rule = position_rule(item.position, prompt_length, n_zeroed, where)
        positions = rule.covers(0, total, n_zeroed)
        if not positions:
            scope = "prompt" if total == prompt_length else "prompt or the generated tokens"
            raise InterventionError(
                f"{where}: position {format_position(item.position)} selects no position of the "
                f"{scope} ({total} positions; the first {n_zeroed} hold no features)"
            )
        _claim(claimed, item, positions, where)
        checked.append(CheckedIntervention(item, item.layer, torch.tensor(item.features, dtype=torch.long),
                                           rule, item.mul, item.add))
    return checked


def _claim(claimed: dict, item: Intervention, positions: list[int], where: str) -> None:
    """Two interventions on the same (layer, position, feature) would be ambiguous."""
    keys = [(item.layer, p, f) for p in positions for f in item.features]
    if len(set(keys)) != len(keys):
        raise InterventionError(f"{where}: names the same feature twice")
    for key in keys:
        if key in claimed:
            raise InterventionError(
                f"{where}: layer {key[0]}, position {key[1]}, feature {key[2]} is also targeted by "
                f"intervention {claimed[key]}; give each feature and position one intervention"
            )
        claimed[key] = item.describe()
