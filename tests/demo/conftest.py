"""Shared fixtures of the demo tests."""

from __future__ import annotations

import pytest
import torch

import circuit_atlas


@pytest.fixture(scope="package")
def model():
    """The bundled demo model with its CLT, loaded once for every case-study test (they only
    read it: interventions never change weights)."""
    torch.set_num_threads(1)
    return circuit_atlas.load("demo", "demo")
