"""Fixtures shared by the CLI tests."""

from __future__ import annotations

import pytest

from circuit_atlas.models.tiny import tiny_language_model
from circuit_atlas.transcoders.random import random_transcoders


@pytest.fixture(scope="module")
def saved_pair(tmp_path_factory):
    """A tiny seeded model and CLT saved to disk, as `--model DIR --transcoders DIR` read them."""
    root = tmp_path_factory.mktemp("pair")
    lm = tiny_language_model("llama", seed=1, n_layers=2, d_model=32)
    lm.save(root / "model")
    tc = random_transcoders("clt", n_layers=2, d_model=32, n_features=48, seed=2,
                            input_hook="hook_resid_mid", output_hook="hook_mlp_out")
    tc.save_native(root / "transcoders")
    return root / "model", root / "transcoders"
