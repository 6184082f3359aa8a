"""The case studies in `examples/` stay tested: `examples/` goes on `sys.path` so the tests import
`case_studies` the way the scripts beside it do."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))


@pytest.fixture(scope="package")
def model(demo_model):
    """The bundled demo model with its CLT (`demo_model` of tests/conftest.py)."""
    return demo_model
