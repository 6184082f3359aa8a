"""Feature selection under a node budget, memory refusal, and bad inputs."""

from __future__ import annotations

import pytest
import torch

import circuit_atlas
from circuit_atlas.errors import AttributionError, MemoryBudgetError, PromptError
from circuit_atlas.graph import Graph, node_influence

from .conftest import build_model, prompt_ids


@pytest.fixture(scope="module")
def llama_clt():
    return build_model("llama-clt", n_layers=3, d_model=48, n_features=96)


def test_budgeted_graph_keeps_the_most_influential_features(llama_clt):
    tokens = prompt_ids(llama_clt, length=9)
    full = circuit_atlas.attribute(llama_clt, tokens, progress=False)
    n_active = full.active_features.shape[0]
    budget = n_active // 4
    part = circuit_atlas.attribute(llama_clt, tokens, max_feature_nodes=budget, batch_size=8, update_interval=1, progress=False)
    assert part.selected_features.shape[0] == budget
    assert torch.equal(part.active_features, full.active_features)

    influence = node_influence(full)[:n_active]
    ranked = torch.argsort(influence, descending=True)
    chosen = set(part.selected_features.tolist())
    top = ranked[: budget // 2].tolist()
    share = sum(i in chosen for i in top) / len(top)
    assert share >= 0.9, f"only {share:.0%} of the top half by full-graph influence were selected"
    # Chosen features carry far more influence than the ones left out.
    mask = torch.zeros(n_active, dtype=torch.bool)
    mask[part.selected_features] = True
    assert influence[mask].mean() > 3 * influence[~mask].mean()

    # Rows of the budgeted graph are the full graph's rows, restricted to the kept columns.
    n_sel = budget
    full_rows = full.adjacency[part.selected_features]
    columns = torch.cat([part.selected_features, torch.arange(n_active, full.adjacency.shape[1])])
    assert torch.allclose(part.adjacency[:n_sel], full_rows[:, columns], atol=1e-5)
    assert torch.allclose(part.adjacency[n_sel:], full.adjacency[n_active:][:, columns], atol=1e-5)


def test_save_load_round_trip_of_a_traced_graph(llama_clt, tmp_path):
    graph = circuit_atlas.attribute(llama_clt, "the cat sat on the mat", progress=False)
    graph.save(tmp_path / "g")
    loaded = Graph.load(tmp_path / "g")
    assert torch.equal(loaded.adjacency, graph.adjacency)
    assert torch.equal(loaded.active_features, graph.active_features)
    assert loaded.tokens == graph.tokens and loaded.logit_tokens == graph.logit_tokens
    dense = loaded.dense_adjacency()
    n = graph.selected_features.shape[0] + (graph.n_layers + 1) * len(graph.tokens) + len(graph.logit_tokens)
    assert dense.shape == (n, n)


def test_memory_estimate_refuses_with_advice(llama_clt):
    with pytest.raises(MemoryBudgetError, match="max_feature_nodes"):
        circuit_atlas.attribute(llama_clt, prompt_ids(llama_clt), memory_limit=1024, progress=False)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"targets": ["not-a-word-in-vocab zzz"]}, AttributionError, "single token"),
        ({"targets": [10**9]}, AttributionError, "outside the vocabulary"),
        ({"targets": []}, AttributionError, "empty"),
        ({"batch_size": 0}, AttributionError, "batch_size"),
        ({"max_feature_nodes": -1}, AttributionError, "max_feature_nodes"),
        ({"desired_logit_prob": 1.5}, AttributionError, "desired_logit_prob"),
        ({"strategy": "magic"}, AttributionError, "strategy"),
    ],
)
def test_bad_settings_raise_clear_errors(llama_clt, kwargs, error, match):
    with pytest.raises(error, match=match):
        circuit_atlas.attribute(llama_clt, prompt_ids(llama_clt), progress=False, **kwargs)


@pytest.mark.parametrize("prompt", ["", "   ", []])
def test_empty_prompt_is_rejected(llama_clt, prompt):
    with pytest.raises(PromptError):
        circuit_atlas.attribute(llama_clt, prompt, progress=False)
