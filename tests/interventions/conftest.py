"""Tiny replacement models and graphs for the intervention tests.

Models come from the shared seeded builders (`tests/conftest.py`; interventions never change
weights, so one model per case is shared). `graph_for` caches one full graph per case
(`max_feature_nodes=None`, so adjacency columns are all active features, docs/algorithm.md §12.5).
"""

from __future__ import annotations

import pytest
import torch

import circuit_atlas

from ..conftest import prompt_ids, shared_model

# The intervention cases: a CLT with skips instead of the plain Gemma-2 CLT of attribution.
INTERVENTION_CASES = ["llama-plt-skip", "llama-clt", "gemma2-plt", "gemma2-clt-skip"]

_GRAPHS: dict = {}


def build_model(case: str, n_layers: int = 3, d_model: int = 48, n_features: int = 64,
                tc_seed: int = 5):
    """One shared model per case and size (interventions only read it)."""
    return shared_model(case, n_layers, d_model, n_features, tc_seed)


def graph_for(case: str):
    if case not in _GRAPHS:
        model = build_model(case)
        _GRAPHS[case] = circuit_atlas.attribute(model, prompt_ids(model), max_feature_nodes=None, progress=False)
    return _GRAPHS[case]


def pre_activation_readout(model, coords: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """⟨w_enc, x⟩ (no bias) of each (layer, position, feature) row of `coords`, from input-hook
    values `inputs` [L, P, d]: the quantity a feature row of the adjacency is defined on."""
    tc = model.transcoders
    out = torch.empty(coords.shape[0], dtype=torch.float64)
    for layer in torch.unique(coords[:, 0]).tolist():
        rows = (coords[:, 0] == layer).nonzero().flatten()
        w = tc.encoder_rows(layer, coords[rows, 2]).double()
        out[rows] = (inputs[layer, coords[rows, 1]].double() * w).sum(-1).cpu()
    return out


def centred_logit_readout(model, final_hidden: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """⟨h[-1], W_U[tok] − mean W_U⟩: the pre-soft-cap, mean-centred logit a logit row explains."""
    w_u = model.lm.hf_model.get_output_embeddings().weight.detach().double()
    vectors = w_u[token_ids] - w_u.mean(0)
    return (vectors @ final_hidden[-1].double()).cpu()


@pytest.fixture(params=INTERVENTION_CASES)
def case(request):
    return request.param
