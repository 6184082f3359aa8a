"""With transcoders that reconstruct the MLPs exactly, a traced graph's scores are 1.

The model's MLPs are replaced by modules that compute the transcoder's own reconstruction, so
every error vector is zero up to rounding: nothing flows through error nodes, and both the
replacement and the completeness score must come out as 1. With the real (random) MLPs the
errors are large and the scores must drop — so the check can fail.
"""

from __future__ import annotations

import torch
from torch import nn

import circuit_atlas
from circuit_atlas.graph import graph_scores
from circuit_atlas.models.tiny import tiny_language_model
from circuit_atlas.transcoders.random import random_transcoders

from .conftest import prompt_ids


class TranscoderMLP(nn.Module):
    """An MLP that is exactly the transcoder's reconstruction of its own output."""

    def __init__(self, transcoders, layer: int):
        super().__init__()
        self.transcoders, self.layer = transcoders, layer

    def forward(self, x):
        acts = self.transcoders.encode(self.layer, x)
        return self.transcoders.reconstruct(self.layer, {self.layer: acts}, x)


def _pair(exact: bool):
    lm = tiny_language_model("llama", seed=2, n_layers=3, d_model=32)
    tc = random_transcoders("plt", n_layers=3, d_model=32, n_features=40, seed=4,
                            input_hook="mlp.hook_in", output_hook="mlp.hook_out")
    if exact:
        for layer, block in enumerate(lm.hf_model.model.layers):
            block.mlp = TranscoderMLP(tc, layer)
    return circuit_atlas.load(lm, tc)


def test_scores_are_one_when_transcoders_are_exact():
    model = _pair(exact=True)
    tokens = prompt_ids(model, length=8)
    run = model.run(tokens)
    assert float(run.errors.abs().max()) < 1e-5
    scores = graph_scores(circuit_atlas.attribute(model, tokens, progress=False))
    assert abs(scores.replacement - 1) < 1e-4 and abs(scores.completeness - 1) < 1e-4


def test_scores_drop_when_transcoders_miss_the_mlps():
    model = _pair(exact=False)
    scores = graph_scores(circuit_atlas.attribute(model, prompt_ids(model, length=8), progress=False))
    assert 0 <= scores.replacement < 0.99 and 0 <= scores.completeness < 0.99
