"""Tiny replacement models and graphs for the intervention tests.

Models are built from seeded configs (no downloads). `graph_for` caches one full graph per case
(`max_feature_nodes=None`, so adjacency columns are all active features, reference §12.5).
"""

from __future__ import annotations

import pytest
import torch

import circuit_atlas
from circuit_atlas.models.tiny import tiny_language_model
from circuit_atlas.transcoders.random import random_transcoders

CASES = {
    "llama-plt-skip": ("llama", "plt", True, "mlp.hook_in", "mlp.hook_out"),
    "llama-clt": ("llama", "clt", False, "hook_resid_mid", "hook_mlp_out"),
    "gemma2-plt": ("gemma2", "plt", False, "ln2.hook_normalized", "hook_mlp_out"),
    "gemma2-clt-skip": ("gemma2", "clt", True, "hook_resid_mid", "hook_mlp_out"),
}

_MODELS: dict = {}
_GRAPHS: dict = {}


def build_model(case: str, n_layers: int = 3, d_model: int = 48, n_features: int = 64, tc_seed: int = 5):
    key = (case, n_layers, d_model, n_features, tc_seed)
    if key not in _MODELS:
        family, kind, skip, input_hook, output_hook = CASES[case]
        lm = tiny_language_model(family, seed=3, n_layers=n_layers, d_model=d_model)
        tc = random_transcoders(kind, n_layers=n_layers, d_model=d_model, n_features=n_features, skip=skip,
                                seed=tc_seed, input_hook=input_hook, output_hook=output_hook)
        _MODELS[key] = circuit_atlas.load(lm, tc)
    return _MODELS[key]


def prompt_ids(model, length: int = 7, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, model.lm.vocab_size, (length,), generator=generator)
    ids[0] = model.tokenizer.bos_token_id
    return ids


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


@pytest.fixture(params=list(CASES))
def case(request):
    return request.param
