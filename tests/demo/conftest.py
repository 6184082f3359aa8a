"""Shared fixtures of the demo tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="package")
def model(demo_model):
    """The bundled demo model with its CLT (`demo_model` of tests/conftest.py)."""
    return demo_model
