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


@pytest.mark.parametrize("engine, allocator", [("dense", "collect_sources"), ("compact", "plan_decoders")])
def test_memory_estimate_refuses_with_advice(llama_clt, monkeypatch, engine, allocator):
    import importlib

    module = importlib.import_module(f"circuit_atlas.attribution.{engine}")

    def gathered(*args, **kwargs):
        raise AssertionError("decoder vectors / plan were built before the memory check refused")

    # The refusal must come before the largest allocations (decoder vectors or plan, row buffer),
    # not after them; for the compact engine, with a limit the clean run itself fits in.
    monkeypatch.setattr(module, allocator, gathered)
    tokens = prompt_ids(llama_clt)
    limit = 1024 if engine == "dense" else 2_000_000
    with pytest.raises(MemoryBudgetError, match="max_feature_nodes") as refused:
        circuit_atlas.attribute(llama_clt, tokens, memory_limit=limit, engine=engine, progress=False)
    if engine == "compact":
        assert "row store" in str(refused.value)  # the full plan refused, not the clean-run check


def test_compact_refuses_a_prompt_whose_clean_run_cannot_fit(llama_clt, monkeypatch):
    """The clean run is checked before the model runs at all."""
    def ran(*args, **kwargs):
        raise AssertionError("the clean run started before the memory check refused")

    monkeypatch.setattr(llama_clt, "run", ran)
    with pytest.raises(MemoryBudgetError, match="clean run"):
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
        ({"engine": "sparse"}, AttributionError, "engine"),
    ],
)
def test_bad_settings_raise_clear_errors(llama_clt, kwargs, error, match):
    with pytest.raises(error, match=match):
        circuit_atlas.attribute(llama_clt, prompt_ids(llama_clt), progress=False, **kwargs)


@pytest.mark.parametrize("prompt", ["", "   ", []])
def test_empty_prompt_is_rejected(llama_clt, prompt):
    with pytest.raises(PromptError):
        circuit_atlas.attribute(llama_clt, prompt, progress=False)


def test_lazy_decoders_read_only_the_rows_of_active_features(tmp_path, monkeypatch):
    """A saved CLT loaded lazily: attribution reads decoder rows of active features only."""
    from circuit_atlas.models.tiny import tiny_language_model
    from circuit_atlas.transcoders import load_transcoders
    from circuit_atlas.transcoders.decoders import MappedDecoder
    from circuit_atlas.transcoders.random import random_transcoders

    random_transcoders("clt", n_layers=2, d_model=32, n_features=4096, seed=9,
                       input_hook="hook_resid_mid", output_hook="hook_mlp_out").save_native(tmp_path / "clt")
    lazy = load_transcoders(tmp_path / "clt", lazy_decoder=True)
    assert lazy.lazy_decoder
    read: list[int] = []
    original = MappedDecoder.rows

    def counting(self, features, offset):
        read.extend(torch.as_tensor(features).flatten().tolist())
        return original(self, features, offset)

    model = circuit_atlas.load(tiny_language_model("llama", seed=1, n_layers=2, d_model=32), lazy)
    run = model.run(model.tokenize("the cat sat"))
    for layer in range(2):  # keep ~1% of features active, as trained transcoders do
        h = lazy.pre_activation(layer, run.mlp_inputs[layer, 1:])
        lazy.encoder_bias(layer).sub_(torch.quantile(h.flatten(), 0.99))
    monkeypatch.setattr(MappedDecoder, "rows", counting)
    graph = circuit_atlas.attribute(model, "the cat sat", max_feature_nodes=20, progress=False)
    active = {(l, f) for l, _, f in graph.active_features.tolist()}
    assert read, "decoder rows were not read through the memory map"
    assert len(set(read)) <= len({f for _, f in active})
    assert len(read) < 2 * 4096 // 4  # a small fraction of the decoder matrix, not all of it
