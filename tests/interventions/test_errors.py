"""Bad interventions are refused with an `InterventionError` naming what is wrong."""

from __future__ import annotations

import pytest

from circuit_atlas.errors import CircuitAtlasError, InterventionError
from circuit_atlas.interventions import Intervention, Supernode, intervene

from .conftest import build_model, prompt_ids


@pytest.fixture(scope="module")
def model():
    return build_model("llama-plt-skip")


@pytest.mark.parametrize(
    "intervention, message",
    [
        (Intervention(3, 2, 0, ablate=True), "layer 3 is out of range 0..2"),
        (Intervention(-1, 2, 0, ablate=True), "layer -1 is out of range 0..2"),
        (Intervention(0, 2, 64, ablate=True), "feature 64 is out of range 0..63"),
        (Intervention(0, 2, [1, -2], value=1.0), "feature -2 is out of range 0..63"),
        (Intervention(0, 7, 1, ablate=True), "position 7 is out of range for a prompt of 7 tokens"),
        (Intervention(0, -8, 1, ablate=True), "position -8 is out of range"),
        (Intervention(0, 0, 1, ablate=True), "position 0 is a zeroed position"),
        (Intervention(0, slice(7, None), 1, ablate=True), "selects no position of the prompt"),
        (Intervention(0, slice(0, 1), 1, ablate=True), "selects no position of the prompt"),
        (Intervention(0, 2, [4, 4], ablate=True), "names the same feature twice"),
    ],
)
def test_out_of_range(model, intervention, message) -> None:
    with pytest.raises(InterventionError, match=message):
        intervene(model, prompt_ids(model), intervention)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(value=float("nan")), "value must be a finite number, got nan"),
        (dict(value=float("inf")), "value must be a finite number"),
        (dict(scale=float("nan")), "scale must be a finite number"),
        (dict(value="3"), "value must be a number"),
        (dict(), "exactly one of value=..., scale=... or ablate=True"),
        (dict(value=1.0, ablate=True), "got value, ablate"),
    ],
)
def test_bad_values(kwargs, message) -> None:
    with pytest.raises(InterventionError, match=message):
        Intervention(0, 1, 2, **kwargs)


@pytest.mark.parametrize(
    "args, message",
    [
        ((1.5, 1, 2), "layer must be an int"),
        ((0, 1.0, 2), "position must be an int, a slice or None"),
        ((0, slice(1, None, 0), 2), "step must be at least 1"),
        ((0, slice(1.0, None), 2), "start must be an int or None"),
        ((0, 1, "2"), "feature must be an int or a non-empty list"),
        ((0, 1, []), "feature must be an int or a non-empty list"),
    ],
)
def test_bad_fields(args, message) -> None:
    with pytest.raises(InterventionError, match=message):
        Intervention(*args, ablate=True)


def test_bad_call_arguments(model) -> None:
    ids = prompt_ids(model)
    ok = Intervention(0, 2, 1, ablate=True)
    with pytest.raises(InterventionError, match="mode must be one of"):
        intervene(model, ids, ok, mode="frozen")
    with pytest.raises(InterventionError, match="constrained_layers only applies"):
        intervene(model, ids, ok, constrained_layers=[0])
    with pytest.raises(InterventionError, match="constrained_layers: layer 5 is out of range"):
        intervene(model, ids, ok, mode="constrained", constrained_layers=[0, 5])
    with pytest.raises(InterventionError, match="constrained_layers is empty"):
        intervene(model, ids, ok, mode="constrained", constrained_layers=[])
    with pytest.raises(InterventionError, match="also targeted by"):
        intervene(model, ids, [ok, Intervention(0, slice(1, 4), 1, scale=2.0)])
    with pytest.raises(InterventionError, match="expected Intervention or Supernode"):
        intervene(model, ids, [(0, 2, 1)])
    with pytest.raises(InterventionError, match="computed for a different prompt"):
        intervene(model, ids, ok, run=model.run(prompt_ids(model, seed=1)))
    with pytest.raises(InterventionError, match="supernode members must be"):
        Supernode([(0, 1)], ablate=True)
    with pytest.raises(InterventionError, match="has no members"):
        Supernode([], ablate=True)
    with pytest.raises(CircuitAtlasError, match="outside the vocabulary"):
        intervene(model, [1, 10_000], ok)


def test_integer_likes_are_accepted_and_normalised() -> None:
    import numpy as np
    import torch

    item = Intervention(np.int64(1), slice(np.int32(2), None), torch.tensor(5), value=np.float32(1.5))
    assert (item.layer, item.position, item.feature, item.features, item.add) == (1, slice(2, None), 5, (5,), 1.5)
    assert type(item.layer) is int and type(item.position.start) is int
    node = Supernode([(np.int64(0), np.int64(3), np.int64(4))], ablate=True)
    assert node.members == ((0, 3, 4),) and all(type(v) is int for v in node.members[0])
    with pytest.raises(InterventionError, match="layer must be an int"):
        Intervention(True, 1, 2, ablate=True)


def test_json_round_trip_and_bad_json() -> None:
    items = [Intervention(2, slice(3, None), [4, 5], value=1.5), Intervention(0, None, 1, ablate=True),
             Intervention(1, -1, 7, scale=-2.0), Intervention(1, slice(1, 6, 2), 7, scale=0.5)]
    for item in items:
        assert Intervention.from_dict(item.to_dict()) == item
    with pytest.raises(InterventionError, match=r"unknown intervention key\(s\): \['feat'\]"):
        Intervention.from_dict({"layer": 0, "position": 1, "feat": 2, "ablate": True})
    with pytest.raises(InterventionError, match="has no 'feature'"):
        Intervention.from_dict({"layer": 0, "position": 1, "ablate": True})
    with pytest.raises(InterventionError, match="value must be a finite number"):
        Intervention.from_dict({"layer": 0, "position": 1, "feature": 2, "value": float("nan")})
    with pytest.raises(InterventionError, match="supernode members must be"):
        Supernode([1, 2, 3], ablate=True)
