"""QK attribution checked against transformers' own attention, on every supported family.

Scores and attention weights come from a plain transformers pass (`attention_helpers`): the query
and key the real attention module hands over, and the family's own eager softmax. The
interventions edit the residual stream entering the layer and read the score or weight again.
"""

from __future__ import annotations

import pytest
import torch

import circuit_atlas
from circuit_atlas.attribution.qk import QKExplainer, qk_attribution
from circuit_atlas.errors import AttentionError, CircuitAtlasError
from circuit_atlas.models import FreezeSpec
from circuit_atlas.models.attention import observe_attention
from circuit_atlas.models.freeze import LIVE, REPLAY
from circuit_atlas.models.tiny import tiny_language_model
from circuit_atlas.transcoders.random import random_transcoders

from .attention_helpers import TransformersCapture

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "gemma3_multimodal", "gpt2"]
HOOKS = {"plt": ("mlp.hook_in", "mlp.hook_out"), "clt": ("hook_resid_mid", "hook_mlp_out")}
N_LAYERS, LENGTH = 3, 9
# (layer, head, query, key): keys inside the sliding window of 4 that Gemma / Mistral layers use
CASES = [(0, 1, 8, 6), (1, 2, 8, 0), (2, 3, 7, 5), (2, 0, 4, 4), (1, 1, 5, 2)]


def build(family: str, kind: str = "clt", skip: bool = True):
    lm = tiny_language_model(family, seed=3, n_layers=N_LAYERS, d_model=48, n_heads=4, n_kv_heads=2)
    tc = random_transcoders(kind, n_layers=N_LAYERS, d_model=48, n_features=64, skip=skip, seed=5,
                            input_hook=HOOKS[kind][0], output_hook=HOOKS[kind][1])
    return circuit_atlas.load(lm, tc)


def prompt(model) -> torch.Tensor:
    ids = torch.randint(4, model.lm.vocab_size, (LENGTH,), generator=torch.Generator().manual_seed(0))
    ids[0] = model.tokenizer.bos_token_id
    return ids


def close(a: float, b: float, tolerance: float = 1e-4) -> bool:
    return abs(a - b) <= tolerance * max(1.0, abs(b))


@pytest.mark.parametrize("family", FAMILIES)
def test_pairs_sum_to_the_score_transformers_computes(family):
    kind = "plt" if family in ("gemma2", "qwen2", "gpt2") else "clt"  # both hook layouts covered
    model = build(family, kind)
    tokens = prompt(model)
    real = TransformersCapture(model.lm, tokens)
    explainer = QKExplainer(model, tokens)
    for layer, head, query, key in CASES:
        if not bool(explainer._visible(layer, query)[key]):
            continue  # outside a sliding window
        result = explainer.explain(layer, head, query, key)
        expected = real.score(layer, head, query, key)
        assert close(result.score, expected), (layer, head, result.score, expected)
        assert close(float(result.values.double().sum()), expected), (layer, head)
        assert abs(result.attention_weight - real.weight(layer, head, query, key)) < 1e-5
        softcap = real.calls[layer]["softcap"]
        if softcap:  # Gemma-2: the softmax sees the capped score
            assert close(result.logit, softcap * torch.tanh(torch.tensor(expected / softcap)).item())
        table = result.terms
        assert len(table) == len(result.query_terms) * len(result.key_terms)
        assert sum(value for _, _, value in table) == pytest.approx(float(result.values.sum()), abs=1e-5)
        assert table.to_records()[0]["query_term"] == result.query_terms[0].id


@pytest.mark.parametrize("family", ["llama", "gemma2", "qwen3", "gpt2"])
def test_terms_sum_to_the_residual_stream(family):
    from circuit_atlas.attribution.qk import residual_terms

    model = build(family, "clt" if family != "gpt2" else "plt")
    tokens = prompt(model)
    real = TransformersCapture(model.lm, tokens)
    explainer = QKExplainer(model, tokens)
    for layer in range(N_LAYERS):
        for position in (0, 4, LENGTH - 1):
            terms, vectors = residual_terms(model, explainer.run, explainer._calls, layer, position)
            actual = real.residuals[layer][0, position].float()
            assert torch.allclose(vectors.sum(0), actual, atol=1e-4, rtol=1e-4), (layer, position)
            assert len({t.id for t in terms}) == len(terms)


def test_terms_name_graph_nodes_in_the_graph_format():
    model = build("llama", "clt")
    tokens = prompt(model)
    graph = circuit_atlas.attribute(model, tokens, progress=False)
    result = qk_attribution(model, tokens, layer=2, head=0, query_position=8, key_position=6)
    ids = set(graph.node_ids())
    nodes = [t for t in result.query_terms + result.key_terms if t.is_node]
    kinds = {t.kind for t in nodes}
    assert kinds == {"feature", "error", "token"}
    for term in nodes:
        assert term.node_id in ids, term
    assert all(t.node_id is None for t in result.query_terms + result.key_terms if not t.is_node)


def test_top_pairs_totals_and_json_agree_with_the_values():
    model = build("gemma2", "plt")
    result = qk_attribution(model, prompt(model), layer=1, head=2, query_position=8, key_position=6)
    top = result.top_pairs(5)
    magnitudes = [abs(p.value) for p in top]
    assert magnitudes == sorted(magnitudes, reverse=True)
    assert magnitudes[0] == pytest.approx(float(result.values.abs().max()))
    by_weight = result.top_pairs(3, by="weight")
    assert by_weight[0].weight_effect == pytest.approx(float(result.weight_effects.max()))
    key_total = sum(v for _, v in result.key_totals())
    assert key_total == pytest.approx(float(result.values.sum()), abs=1e-5)
    data = result.to_json(top=4)
    assert len(data["pairs"]) == 4 and data["score"] == result.score
    assert set(data["labels"]) >= {data["pairs"][0]["query_term"], data["pairs"][0]["key_term"]}
    assert "score" in str(result)


def test_weight_effect_is_the_softmax_without_that_pair():
    """The softmax view, checked from transformers' weights: taking a value out of the key's
    (pre-cap) score and renormalising the real row reproduces weight − weight_effect."""
    model = build("gemma2", "plt")
    tokens = prompt(model)
    real = TransformersCapture(model.lm, tokens)
    layer, head, query, key = 1, 2, 8, 6
    result = qk_attribution(model, tokens, layer=layer, head=head, query_position=query, key_position=key)
    weights = real.calls[layer]["weights"][0, head, query].double()
    softcap = real.calls[layer]["softcap"]
    logits = torch.log(weights)  # up to one constant per row
    pair = result.top_pairs(1)[0]
    i = [t.id for t in result.query_terms].index(pair.query_term)
    j = [t.id for t in result.key_terms].index(pair.key_term)
    capped = softcap * torch.tanh(torch.tensor(result.score - pair.value, dtype=torch.float64) / softcap)
    shifted = logits.clone()
    shifted[key] = logits[key] - result.logit + capped
    expected = weights[key] - torch.softmax(shifted[: query + 1], -1)[key]
    assert float(result.weight_effects[i, j]) == pytest.approx(float(expected), abs=1e-5)


def _remove_from_residual(layer, position, vector):
    def edit(index, hidden):
        if index != layer:
            return hidden
        hidden = hidden.clone()
        hidden[0, position] -= vector.to(hidden.dtype)
        return hidden

    return edit


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma2", "gpt2"])
def test_removing_the_top_key_term_changes_the_score_by_its_value(family):
    """Constrained: norms frozen at the clean pass, the term taken out of the residual stream
    entering the layer at the key position; the score read from the query and key transformers'
    attention module produces then moves by exactly the term's predicted share."""
    from circuit_atlas.attribution.qk import residual_terms

    model = build(family, "clt")
    tokens = prompt(model)
    layer, head, query, key = 2, 1, 8, 6
    explainer = QKExplainer(model, tokens)
    result = explainer.explain(layer, head, query, key)
    totals = [(t, v) for t, v in result.key_totals() if t.kind != "key_bias"]
    term, predicted = totals[0]
    terms, vectors = residual_terms(model, explainer.run, explainer._calls, layer, key)
    vector = vectors[[t.id for t in terms].index(term.id)]

    seen = {}
    handle = model.lm.adapter.layer_modules(model.lm.hf_model)[layer].register_forward_pre_hook(
        lambda m, a, k: ((a[0] - _placed(a[0], key, vector), *a[1:]), k) if a else
        (a, {**k, "hidden_states": k["hidden_states"] - _placed(k["hidden_states"], key, vector)}),
        with_kwargs=True)
    try:
        with torch.no_grad(), observe_attention(lambda call: seen.__setitem__(call.layer, call)):
            model.lm.forward(tokens[None], freeze=FreezeSpec(attention=LIVE, norms=REPLAY,
                                                               replay_from=explainer.run.record))
    finally:
        handle.remove()
    call = seen[layer]
    after = float(call.scaling * (call.query[0, head, query].double() @ call.key[0, head, key].double()))
    assert close(result.score - after, predicted), (term.id, result.score - after, predicted)


def _placed(hidden, position, vector):
    delta = torch.zeros_like(hidden)
    delta[:, position] = vector.to(hidden.dtype)
    return delta


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma2", "gpt2"])
def test_removing_it_in_the_real_model_moves_the_weight_the_predicted_way(family):
    """Unconstrained: the same removal in a plain transformers pass (live norms, live attention)
    moves the key's attention weight in the direction the frozen prediction gives."""
    from circuit_atlas.attribution.qk import residual_terms

    model = build(family, "clt")
    tokens = prompt(model)
    layer, head, query, key = 2, 1, 8, 6
    explainer = QKExplainer(model, tokens)
    result = explainer.explain(layer, head, query, key)
    term, predicted_score = next((t, v) for t, v in result.key_totals() if t.kind != "key_bias")
    terms, vectors = residual_terms(model, explainer.run, explainer._calls, layer, key)
    vector = vectors[[t.id for t in terms].index(term.id)]
    clean = TransformersCapture(model.lm, tokens)
    edited = TransformersCapture(model.lm, tokens, residual_edit=_remove_from_residual(layer, key, vector))
    moved = edited.weight(layer, head, query, key) - clean.weight(layer, head, query, key)
    # frozen prediction: the key's score loses `predicted_score`, the other keys keep theirs
    row = clean.calls[layer]["weights"][0, head, query, : query + 1].double()
    softcap = clean.calls[layer]["softcap"]
    logit = torch.log(row)
    cap = (lambda s: softcap * torch.tanh(s / softcap)) if softcap else (lambda s: s)
    logit_after = logit.clone()
    logit_after[key] += cap(torch.tensor(result.score - predicted_score, dtype=torch.float64)) - result.logit
    predicted = float(torch.softmax(logit_after, -1)[key] - row[key])
    assert abs(predicted) > 1e-3
    assert moved * predicted > 0, (term.id, moved, predicted)


def test_bad_positions_heads_and_layers_are_named():
    model = build("mistral", "plt")
    tokens = prompt(model)
    explainer = QKExplainer(model, tokens)
    cases = [
        (dict(layer=3, head=0, query_position=4, key_position=2), r"layer 3 is out of range 0\.\.2"),
        (dict(layer=-1, head=0, query_position=4, key_position=2), r"layer -1 is out of range"),
        (dict(layer=1.5, head=0, query_position=4, key_position=2), r"layer must be an integer, got 1\.5"),
        (dict(layer=0, head=4, query_position=4, key_position=2), r"head 4 is out of range 0\.\.3"),
        (dict(layer=0, head=0, query_position=9, key_position=2), r"query_position 9 is out of range 0\.\.8"),
        (dict(layer=0, head=0, query_position=4, key_position=-2), r"key_position -2 is out of range"),
        (dict(layer=0, head=0, query_position=4, key_position=5), r"key_position 5 is after query_position 4"),
        (dict(layer=0, head=0, query_position=8, key_position=1), r"outside the layer's sliding window"),
    ]
    for kwargs, message in cases:
        with pytest.raises(AttentionError, match=message):
            explainer.explain(kwargs["layer"], kwargs["head"], kwargs["query_position"], kwargs["key_position"])
    with pytest.raises(CircuitAtlasError):
        qk_attribution(model, tokens, layer=0, head=0, query_position=2, key_position=3)
    with pytest.raises(AttentionError, match="by must be one of"):
        explainer.explain(1, 0, 4, 2).top_pairs(3, by="size")
