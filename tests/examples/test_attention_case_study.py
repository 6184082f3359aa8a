"""The attention case study (`case_studies.attention`): which head lets the layer-0 region feature
read the city, why it attends there, and key edits that confirm it.

The sweeps and the key edit are checked against the real model with a token substituted in the
prompt (at layer 0 a key depends only on its token and position, so substituting the city token
gives exactly the key the edit or the sweep claims). The edits over held-out questions run on one
question per region (16 of 48) to stay quick; the thresholds sit below what the full run measures
(docs/case-studies.md) and above what the controls give.
"""

from __future__ import annotations

import pytest
import torch

from circuit_atlas.attribution.qk import QKExplainer
from circuit_atlas.demo import bundle
from circuit_atlas.models.attention import observe_attention

from case_studies import attention as at
from case_studies.codes import first_token_id


@pytest.fixture(scope="module")
def world():
    return bundle.demo_world()


@pytest.fixture(scope="module")
def dallas_edge(model):
    return at.reader_edge(model, bundle.default_two_hop_item())


@pytest.fixture(scope="module")
def explainer(model):
    return QKExplainer(model, bundle.DEFAULT_PROMPT)


@pytest.fixture(scope="module")
def questions(model, world):
    items = bundle.two_hop_eval_items()
    others = at.other_cities(world, items)
    subset = items[::3]  # one held-out city of each region
    return [at.Question.build(model, at.reader_edge(model, item), others[item.city])
            for item in subset]


def layer0_call(model, tokens: torch.Tensor):
    calls = {}
    with torch.no_grad(), observe_attention(lambda call: calls.setdefault(call.layer, call)):
        model.run(tokens)
    return calls[at.LAYER]


def substituted(tokens: torch.Tensor, position: int, token: int) -> torch.Tensor:
    changed = tokens.clone()
    changed[position] = token
    return changed


# ---------------------------------------------------------------------------------------------
# Which head


def test_the_texas_feature_reads_dallas_through_two_layer_0_heads(model, dallas_edge):
    assert dallas_edge.source == f"E_{first_token_id(model, 'dallas')}_{at.CITY}"
    assert dallas_edge.feature == "0_479_8"  # "texas (region, from context)"
    assert dallas_edge.heads.edge > 1.0
    assert all(row.layer == at.LAYER for row in dallas_edge.heads.rows)
    assert dallas_edge.top_head == 0 and dallas_edge.share(0) >= 0.6
    assert dallas_edge.ranked_heads()[1] == 3
    assert dallas_edge.share(0) + dallas_edge.share(3) == pytest.approx(1.0, abs=0.02)


def test_condition_heads_resolve_from_the_edge(dallas_edge):
    top = at.Condition("t", ("top",), "frame")
    both = at.Condition("b", ("top", "second"), "frame")
    rest = at.Condition("r", ("rest",), "frame")
    assert top.resolve_heads(dallas_edge) == [0]
    assert both.resolve_heads(dallas_edge) == [0, 3]
    assert sorted(rest.resolve_heads(dallas_edge)) == [1, 2]
    assert at.Condition("x", (2,), "random").resolve_heads(dallas_edge) == [2]
    with pytest.raises(ValueError, match="sees must be one of"):
        at.Condition("bad", ("top",), "everything")
    with pytest.raises(ValueError, match="a head is an index"):
        at.Condition("bad", ("third",), "frame")


# ---------------------------------------------------------------------------------------------
# Which terms


def test_qk_of_every_key_is_one_token_pair_and_only_the_city_scores_above_zero(explainer):
    rows = at.prompt_keys(explainer, 0)
    assert [r.position for r in rows] == list(range(at.QUERY + 1))
    is_node = f"E_{int(explainer.tokens[at.QUERY])}_{at.QUERY}"
    for row in rows:
        assert row.query_term == is_node
        assert row.key_term == f"E_{int(explainer.tokens[row.position])}_{row.position}"
        assert row.pair_value == pytest.approx(row.score, abs=1e-5)
    city = rows[at.CITY]
    assert city.token == " dallas" and city.score > 0 and city.weight > 0.5
    assert city.weight_effect > 0
    assert all(r.score < 0 and r.weight_effect < 0 for r in rows if r.position != at.CITY)


def test_key_sweep_is_the_score_of_the_model_with_that_token_at_the_city(model, explainer):
    tokens = explainer.tokens
    scores = at.key_sweep(model, explainer.run, 0)
    assert scores.shape == (model.lm.vocab_size,)
    probe = [int(tokens[at.CITY]), int(tokens[at.NEIGHBOUR]), first_token_id(model, "seattle"),
             int(tokens[1]), 1, 400]
    for token in probe:
        call = layer0_call(model, substituted(tokens, at.CITY, token))
        real = call.scaling * float(call.query[0, 0, at.QUERY] @ call.key[0, 0, at.CITY])
        assert float(scores[token]) == pytest.approx(real, abs=1e-4), token


def test_query_sweep_is_the_weight_of_the_model_with_that_token_last(model, explainer):
    tokens = explainer.tokens
    weights = at.query_sweep(model, explainer.run, 0)
    for token in (int(tokens[at.QUERY]), first_token_id(model, "est"), int(tokens[2]), 400):
        call = layer0_call(model, substituted(tokens, at.QUERY, token))
        assert float(weights[token]) == pytest.approx(float(call.pattern[0, 0, at.QUERY, at.CITY]),
                                                      abs=1e-5), token


def test_head_0_avoids_the_frame_words_and_its_query_is_the_word_is(model, explainer, world):
    keys = at.key_sweep(model, explainer.run, 0)
    frame = sorted({int(t) for t in explainer.tokens[:at.CITY]})
    held = [first_token_id(model, c) for c in world.held_out_cities]
    assert at.percentile(keys, frame) < 10
    assert at.percentile(keys, held) > at.percentile(keys, frame) + 20
    queries = at.query_sweep(model, explainer.run, 0)
    order = torch.argsort(queries, descending=True).tolist()
    assert order[0] == int(explainer.tokens[at.QUERY])  # " is"
    assert {first_token_id(model, "est"), first_token_id(model, "es")} <= set(order[:5])


# ---------------------------------------------------------------------------------------------
# Key edits


def test_key_edits_give_the_predicted_score_and_only_touch_that_key(model, questions):
    question = questions[0]
    assert question.item.city == "dallas"
    head = question.edge.top_head
    sweep = at.key_sweep(model, question.run, head)
    frame, other = int(question.tokens[at.NEIGHBOUR]), first_token_id(model, question.other_city)
    for sees, predicted in (("nothing", 0.0), ("frame", float(sweep[frame])),
                            ("other_city", float(sweep[other]))):
        outcome = question.edit(model, at.Condition(sees, ("top",), sees))
        assert outcome.edited.city_scores[head] == pytest.approx(predicted, abs=1e-4), sees
        for h in range(len(outcome.clean.rows)):
            if h != head:
                assert outcome.edited.rows[h] == pytest.approx(outcome.clean.rows[h], abs=1e-6)
    # the frame-word edit gives the head the pattern row of the prompt with ' containing' at
    # the city (the head's query is unchanged; its key at the city is the substituted one)
    edited = question.edit(model, at.Condition("f", ("top",), "frame")).edited
    call = layer0_call(model, substituted(question.tokens, at.CITY, frame))
    real_row = call.pattern[0, head, at.QUERY].tolist()
    assert list(edited.rows[head]) == pytest.approx(real_row, abs=1e-5)


def _rates(model, questions, name: str, seeds=(0,)) -> dict:
    condition = next(c for c in at.conditions() if c.name == name)
    return at.rates(at.run_condition(model, questions, condition, seeds=seeds), condition.position)


def test_blinding_the_carrying_head_to_the_city_removes_the_region_feature(model, questions):
    assert sum(q.clean.answer == q.item.answer for q in questions) >= 15
    top = _rates(model, questions, "key at the city sees a frame word (' containing')")
    assert top["attention_lost"] >= 0.9 and top["feature_lost"] >= 0.7, top
    assert top["answer_lost"] >= 0.4, top
    both = _rates(model, questions, "frame-word edit on both carrying heads")
    assert both["feature_lost"] >= 0.9 and both["answer_lost"] >= 0.75, both


def test_controls_leave_attention_feature_and_answer(model, questions):
    for name, seeds in (("control: key sees another held-out city", (0,)),
                        ("control: random vector (city embedding's norm) added", (0, 1)),
                        ("control: frame-word edit on the non-carrying heads", (0,))):
        found = _rates(model, questions, name, seeds)
        assert found["attention_lost"] <= 0.1, (name, found)
        assert found["feature_lost"] <= 0.2, (name, found)
        assert found["answer_lost"] <= 0.1, (name, found)


def test_removing_the_key_term_only_weakens_attention(model, questions):
    """With the city's key-side term gone the score is 0, still above every frame word's, so
    the head keeps part of its attention (as the QK picture predicts)."""
    found = _rates(model, questions, "key at the city sees nothing of the city token")
    assert 0.3 <= found["median_weight_ratio"] <= 0.9, found
    assert found["answer_lost"] <= 0.1, found


def test_the_city_term_draws_the_head_to_another_position(model, questions):
    moved = _rates(model, questions, "key at ' containing' sees the city")
    assert moved["mean_weight_at_position_before"] <= 0.05
    assert moved["mean_weight_at_position_after"] >= 0.2, moved
    control = _rates(model, questions, "control: random vector added at ' containing'")
    assert control["mean_weight_at_position_after"] <= 0.05, control
