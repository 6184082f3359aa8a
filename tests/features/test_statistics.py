"""The stored statistics against a brute-force pass over the same corpus (tests/features/conftest)."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch

from circuit_atlas.features import BuildSettings, FeatureStore, build_feature_store
from circuit_atlas.features import builder as builder_module
from circuit_atlas.features import storage
from circuit_atlas.features.keys import occurrence_id, sample_keys

N_LAYERS, N_FEATURES = 2, 24  # as in conftest.make_model
CONTEXT_LEN = 12
SETTINGS = BuildSettings(context_len=CONTEXT_LEN, top_k=6, n_samples=10, context_before=4,
                         context_after=2, n_logits=5, seed=3)


@pytest.fixture(scope="module")
def built(plt_model, tmp_path_factory, helpers):
    texts = helpers.word_texts(24, seed=5) + ["   ", ""]  # blank documents are skipped, as the corpus says
    out = tmp_path_factory.mktemp("store")
    report = build_feature_store(plt_model, texts, out, SETTINGS, batch_size=1, progress=False)
    store = FeatureStore(out, n_quantiles=4, examples_per_quantile=3)
    return report, store, helpers.brute_force(plt_model, texts, CONTEXT_LEN), out


def _features():
    return [(layer, feature) for layer in range(N_LAYERS) for feature in range(N_FEATURES)]


def test_top_examples_are_exactly_the_brute_force_maxima(built):
    _, store, brute, _ = built
    checked = 0
    for layer, feature in _features():
        expected = brute.top(layer, feature, SETTINGS.top_k, SETTINGS.context_before,
                             SETTINGS.context_after)
        got = store.card(layer, feature).top_examples
        assert [(e.activation, e.document, e.window, e.position) for e in got] == expected
        checked += bool(expected)
    assert checked > N_LAYERS * N_FEATURES // 2  # most features fire somewhere


def test_example_contexts_hold_the_window_tokens_and_this_features_activations(built):
    _, store, brute, _ = built
    for layer, feature in [(0, 1), (1, 7), (1, 20)]:
        for ex in store.card(layer, feature).top_examples:
            ids, acts = brute.windows[(ex.document, ex.window)]
            lo = max(0, ex.position - SETTINGS.context_before)
            hi = min(len(ids), ex.position + SETTINGS.context_after + 1)
            assert ex.token_ids == ids[lo:hi]
            assert ex.tokens == [store.token_strings([i])[0] for i in ids[lo:hi]]
            np.testing.assert_array_equal(np.float32(ex.activations), acts[layer, lo:hi, feature])
            assert ex.focus == ex.position - lo and ex.activations[ex.focus] == ex.activation


def test_density_histogram_and_mean_match_direct_counts(built):
    report, store, brute, _ = built
    assert report.tokens == brute.n_tokens and report.complete and report.documents == 24
    edges = np.asarray(store.edges, dtype=np.float32)
    for layer, feature in _features():
        card = store.card(layer, feature)
        values = np.float32([o[0] for o in brute.occurrences(layer, feature)])
        assert card.n_tokens == brute.n_tokens
        assert card.n_active == len(values)
        assert card.density == pytest.approx(len(values) / brute.n_tokens, abs=0)
        counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
        assert card.histogram.counts == counts.tolist()
        if len(values):
            assert card.mean_activation == pytest.approx(values.astype(np.float64).mean(), abs=1e-6)


def test_quantile_samples_lie_in_their_quantile(built):
    _, store, brute, _ = built
    for layer, feature in _features():
        card = store.card(layer, feature)
        values = np.float32([o[0] for o in brute.occurrences(layer, feature)])
        by_id = {(d, w, p): v for v, d, w, p in brute.occurrences(layer, feature)}
        total = len(values)
        for group in card.quantile_examples:
            inside = (values >= group.lower) & (values < group.upper)
            assert group.count == int(inside.sum()) > 0
            assert group.start_fraction == pytest.approx(float((values < group.lower).sum()) / total)
            assert group.end_fraction == pytest.approx(float((values < group.upper).sum()) / total)
            for ex in group.examples:
                assert group.lower <= ex.activation < group.upper
                assert by_id[(ex.document, ex.window, ex.position)] == ex.activation
        if total:
            fractions = [(g.start_fraction, g.end_fraction) for g in reversed(card.quantile_examples)]
            assert fractions[0][0] == 0 and fractions[-1][1] == 1  # the groups tile the activations
            assert all(a[1] == b[0] for a, b in zip(fractions, fractions[1:]))


def test_sample_is_the_bottom_keys_of_all_occurrences(built):
    _, store, brute, out = built
    conn = storage.connect(storage.store_file(out), readonly=True)
    for layer, feature in [(0, 0), (0, 5), (1, 3), (1, 11)]:
        occ = brute.occurrences(layer, feature)
        oids = torch.tensor([occurrence_id(d, w, p) for _, d, w, p in occ], dtype=torch.long)
        keys = sample_keys(SETTINGS.seed, oids).tolist()
        expected = sorted(zip(keys, oids.tolist()))[:SETTINGS.n_samples]
        rows = conn.execute("SELECT sample_key, oid FROM examples WHERE layer=? AND feature=? AND "
                            "kind=1", (layer, feature)).fetchall()
        assert sorted(rows) == expected
    conn.close()


def test_batching_and_padding_do_not_change_the_statistics(plt_model, built, tmp_path, helpers):
    _, exact, _, _ = built
    texts = helpers.word_texts(24, seed=5)
    build_feature_store(plt_model, texts, tmp_path, SETTINGS, batch_size=5, progress=False)
    batched = FeatureStore(tmp_path, n_quantiles=4, examples_per_quantile=3)
    for layer, feature in _features():
        a, b = exact.card(layer, feature), batched.card(layer, feature)
        assert (a.n_active, a.histogram.counts) == (b.n_active, b.histogram.counts)
        np.testing.assert_allclose([e.activation for e in a.top_examples],
                                   [e.activation for e in b.top_examples], rtol=1e-5, atol=1e-6)


def test_logit_effects_equal_decoder_times_unembedding(clt_model, tmp_path, helpers):
    """CLT: the summed decoder over target layers; computed here through `decode` + lm_head."""
    settings = BuildSettings(context_len=CONTEXT_LEN, n_logits=7)
    build_feature_store(clt_model, helpers.word_texts(2), tmp_path, settings, progress=False)
    store = FeatureStore(tmp_path)
    tc, lm = clt_model.transcoders, clt_model.lm
    w_u = lm.hf_model.lm_head.weight.detach().double().numpy()
    for layer in range(N_LAYERS):
        one_hot = torch.eye(N_FEATURES)
        direction = sum(tc.decode(layer, one_hot, target) for target in range(layer, N_LAYERS))
        effects = direction.double().numpy() @ w_u.T  # [F, V]
        for feature in range(0, N_FEATURES, 5):
            card = store.card(layer, feature)
            order = np.argsort(-effects[feature], kind="stable")
            assert [t.token_id for t in card.top_logits] == order[:7].tolist()
            assert [t.token_id for t in card.bottom_logits] == order[::-1][:7].tolist()
            np.testing.assert_allclose([t.value for t in card.top_logits], effects[feature][order[:7]],
                                       rtol=1e-5, atol=1e-5)
            assert [t.token for t in card.top_logits] == lm.token_strings(order[:7])


def test_ties_go_to_the_earliest_window_and_repeated_contexts_appear_once(plt_model, tmp_path, helpers):
    """Identical documents give identical activations and identical contexts: the context is kept
    once, with its earliest window, both across batches (batch size 1, compared with brute force)
    and inside one batch; the other places of the list go to other contexts."""
    texts = helpers.word_texts(3, seed=9) + ["the big red dog said one two"] * 9
    settings = BuildSettings(context_len=CONTEXT_LEN, top_k=4)
    build_feature_store(plt_model, texts, tmp_path / "a", settings, batch_size=1, progress=False)
    store = FeatureStore(tmp_path / "a")
    brute = helpers.brute_force(plt_model, texts, CONTEXT_LEN)
    repeated = 0
    for layer, feature in _features():
        top = store.card(layer, feature).top_examples
        got = [(e.activation, e.document, e.window, e.position) for e in top]
        assert got == brute.top(layer, feature, 4)
        contexts = [(tuple(e.token_ids), e.focus) for e in top]
        assert len(set(contexts)) == len(contexts)
        repeated += any(e.document == 3 for e in top)
    assert repeated > 5  # the repeated document is among the top contexts of many features

    # all windows the same, three per batch: one example, the first document's
    build_feature_store(plt_model, texts[3:], tmp_path / "b", settings, batch_size=3, progress=False)
    same = FeatureStore(tmp_path / "b")
    for layer, feature in _features():
        got = same.card(layer, feature).top_examples
        if got:
            assert [e.document for e in got] == [0]


def test_distinct_contexts_survive_resume_and_match_brute_force_on_repetitive_text(
        plt_model, tmp_path, helpers, dump, monkeypatch):
    """A corpus of a few sentences repeated many times (like the demo's toy world): top lists hold
    distinct contexts only, equal to brute force, and a build interrupted after every batch (the
    lists reloaded from the store each time) ends equal to a straight one."""
    base = helpers.word_texts(5, seed=21, max_words=12)
    texts = [base[i % 5] for i in range(40)] + helpers.word_texts(6, seed=22)
    settings = BuildSettings(context_len=CONTEXT_LEN, top_k=5, context_before=4, context_after=2)
    build_feature_store(plt_model, texts, tmp_path / "straight", settings, batch_size=1, progress=False)
    brute = helpers.brute_force(plt_model, texts, CONTEXT_LEN)
    store = FeatureStore(tmp_path / "straight")
    for layer, feature in _features():
        got = [(e.activation, e.document, e.window, e.position)
               for e in store.card(layer, feature).top_examples]
        assert got == brute.top(layer, feature, 5, 4, 2)
    original = builder_module.StoreBuilder._process
    calls = []

    def process_then_interrupt(self, batch):  # a Ctrl-C after every eighth batch
        original(self, batch)
        calls.append(1)
        if len(calls) % 8 == 0:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(builder_module.StoreBuilder, "_process", process_then_interrupt)
    runs = 0
    while build_feature_store(plt_model, texts, tmp_path / "steps", settings, batch_size=1,
                              progress=False).stop_reason == "interrupted":
        runs += 1
    assert runs > 3
    assert dump(tmp_path / "steps") == dump(tmp_path / "straight")
