"""Per-document windows: one document per BOS-started window, padding that never becomes data
and never enters a loss or statistic, the automatic layout choice, and the refusal to report a
meaningless loss recovered."""

import pytest
import torch

from circuit_atlas.io.corpus import open_corpus
from circuit_atlas.training.errors import TrainingDataError
from circuit_atlas.training.evaluate import EvalReport, evaluate_transcoders
from circuit_atlas.training.streaming import ModelActivationSource, TokenWindows, pad_windows
from circuit_atlas.training.windows import check_corpus_feeds_a_step, choose_windows


def test_document_windows_hold_one_document_each_and_split_long_ones():
    from circuit_atlas.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    bos = tok.bos_token_id
    texts = ["the cat", "a dog saw the bird and the cat", "one two"]
    windows = TokenWindows(open_corpus(texts), tok, 5, mode="documents")
    got = [windows.next_window().tolist() for _ in range(5)]
    ids = [tok.encode(t, add_special_tokens=False) for t in texts]
    long = ids[1]
    assert got[0] == [bos, *ids[0]]
    assert got[1] == [bos, *long[:4]] and got[2] == [bos, *long[4:8]]  # split, BOS again
    assert got[3] == [bos, *ids[2]]
    assert got[4] == [bos, *ids[0]]  # next epoch
    state = TokenWindows(open_corpus(texts), tok, 5, mode="documents")
    state.next_window()
    saved = state.state_dict()
    again = TokenWindows(open_corpus(texts), tok, 5, mode="documents")
    again.load_state_dict(saved)
    assert again.next_window().tolist() == got[1]


def test_document_pairs_equal_each_document_run_alone(tiny_lm, word_texts):
    texts = word_texts(12, seed=4, max_words=9)
    source = ModelActivationSource(tiny_lm, open_corpus(texts), input_hook="mlp.hook_in",
                                   output_hook="mlp.hook_out", context_length=16,
                                   model_batch_size=2, buffer_tokens=1, windows="documents",
                                   layers=[1])
    windows = [source.windows.next_window() for _ in range(len(texts))]
    expected_x, expected_y = [], []
    for window in windows:  # each document alone: no padding anywhere
        record = tiny_lm.forward(window[None], input_hook="mlp.hook_in",
                                 output_hook="mlp.hook_out")
        expected_x.append(record.inputs[1][0, 1:].detach())
        expected_y.append(record.outputs[1][0, 1:].detach())
    expected_x, expected_y = torch.cat(expected_x), torch.cat(expected_y)
    tokens, mask = pad_windows(windows, pad_id=0)
    assert (~mask).any()  # the batch really is padded
    x, y = source.activations(tokens, mask)
    assert x.shape == (expected_x.shape[0], 1, 16)  # exactly the real positions, pads dropped
    torch.testing.assert_close(x[:, 0], expected_x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y[:, 0], expected_y, rtol=1e-5, atol=1e-5)
    # and the stream serves these pairs (shuffled; the last fill may reach into the next pass)
    fresh = ModelActivationSource(tiny_lm, open_corpus(texts), input_hook="mlp.hook_in",
                                  output_hook="mlp.hook_out", context_length=16,
                                  model_batch_size=2, buffer_tokens=1, windows="documents",
                                  layers=[1])
    served = torch.cat([fresh.next_batch(1)[0] for _ in range(expected_x.shape[0])])
    distance = torch.cdist(served[:, 0], expected_x,
                           compute_mode="donot_use_mm_for_euclid_dist").min(1).values
    assert distance.max() < 1e-5


def test_padded_evaluation_equals_unpadded(tiny_lm, word_texts):
    from circuit_atlas.transcoders import random_transcoders

    tc = random_transcoders("plt", 2, 16, 24, activation="jumprelu", seed=2,
                            input_hook="mlp.hook_in", output_hook="mlp.hook_out")
    windows = TokenWindows(open_corpus(word_texts(4, seed=9, max_words=12)), tiny_lm.tokenizer,
                           32, mode="documents")
    docs = [windows.next_window() for _ in range(4)]
    padded = evaluate_transcoders(tiny_lm, tc, [pad_windows(docs, 0)], progress=False)
    alone = [evaluate_transcoders(tiny_lm, tc, [d[None]], progress=False) for d in docs]
    targets = [d.numel() - 1 for d in docs]
    for field in ("ce_original", "ce_replacement", "ce_zero_ablation"):
        expected = sum(getattr(r, field) * n for r, n in zip(alone, targets)) / sum(targets)
        assert abs(getattr(padded, field) - expected) < 1e-5
    assert padded.n_tokens == sum(d.numel() for d in docs)
    # L0 over real positions only (the pads would otherwise add their own activations)
    real_l0 = sum(r.layers[0].l0 * (d.numel() - 1) for r, d in zip(alone, docs)) / sum(
        d.numel() - 1 for d in docs)
    assert abs(padded.layers[0].l0 - real_l0) < 1e-5


def test_loss_recovered_is_refused_when_zero_ablation_beats_the_model():
    report = EvalReport([], ce_original=8.4, ce_replacement=9.0, ce_zero_ablation=7.9,
                        n_tokens=100)
    assert report.loss_recovered is None
    assert "zero-ablating the MLPs" in report.to_json()["loss_recovered_refused"]
    ok = EvalReport([], ce_original=1.0, ce_replacement=1.5, ce_zero_ablation=3.0, n_tokens=1)
    assert ok.loss_recovered == pytest.approx(0.75) and ok.loss_recovered_refusal is None


def test_auto_layout_follows_the_measured_losses(tiny_lm, word_texts):
    corpus = open_corpus(word_texts(40, seed=1, max_words=8))
    choice = choose_windows(tiny_lm, corpus, 32)
    assert choice.loss_packed is not None and choice.loss_documents is not None
    expected = "packed" if choice.loss_packed <= 1.05 * choice.loss_documents else "documents"
    assert choice.mode == expected and f"{choice.loss_packed:.3f}" in choice.reason
    long_docs = open_corpus(word_texts(10, seed=2, min_words=40, max_words=50))
    assert choose_windows(tiny_lm, long_docs, 16).mode == "documents"  # nothing to pack
    assert choose_windows(tiny_lm, corpus, 32, "packed").mode == "packed"


def test_corpus_too_small_for_one_step_is_caught_without_the_model(word_texts):
    from circuit_atlas.models.tiny import tiny_tokenizer

    corpus = open_corpus(word_texts(5, seed=3, max_words=6))
    with pytest.raises(TrainingDataError, match="fewer than one training step"):
        check_corpus_feeds_a_step(corpus, tiny_tokenizer(), 16, "documents", 1000, 1)
    assert check_corpus_feeds_a_step(corpus, tiny_tokenizer(), 16, "documents", 10, 1) >= 10
