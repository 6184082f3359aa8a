"""Logit target selection, checked against softmax / cumulative sums computed here."""

from __future__ import annotations

import pytest
import torch

import circuit_atlas
from circuit_atlas.attribution.targets import salient_token_ids
from circuit_atlas.errors import AttributionError

from .conftest import build_model, prompt_ids


@pytest.mark.parametrize("desired, cap", [(0.5, 10), (0.95, 10), (0.95, 3), (1.0, 50)])
def test_salient_targets_are_the_smallest_top_set_reaching_the_probability(desired, cap):
    logits = torch.randn(200, generator=torch.Generator().manual_seed(1)) * 3
    ids, probs = salient_token_ids(logits, cap, desired)
    expected = torch.softmax(logits.double(), -1)
    order = torch.argsort(expected, descending=True)
    cumulative = torch.cumsum(expected[order], 0)
    need = int((cumulative < desired - 1e-6).sum()) + 1
    assert ids.tolist() == order[: min(need, cap)].tolist()
    assert torch.allclose(probs.double(), expected[ids], atol=1e-6)


def test_attribute_uses_salient_targets_and_their_probabilities():
    model = build_model("llama-clt")
    tokens = prompt_ids(model)
    graph = circuit_atlas.attribute(model, tokens, max_feature_nodes=0, max_n_logits=4, desired_logit_prob=0.99, progress=False)
    logits = model.lm.hf_model(tokens[None].to(model.lm.device)).logits[0, -1].cpu()
    expected = torch.softmax(logits.double(), -1)
    top = torch.argsort(expected, descending=True)[: len(graph.logit_tokens)]
    assert graph.logit_token_ids.tolist() == top.tolist() and len(graph.logit_tokens) <= 4
    assert torch.allclose(graph.logit_probabilities.double(), expected[top], atol=1e-5)


def test_a_word_outside_the_vocabulary_is_rejected():
    model = build_model("llama-clt")
    with pytest.raises(AttributionError, match="not in the vocabulary"):
        circuit_atlas.attribute(model, prompt_ids(model), targets=["zzzqqq"], progress=False)
