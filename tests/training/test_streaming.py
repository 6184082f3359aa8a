"""Streaming (MLP input, MLP output) pairs from a model: content, shuffling, resume, ranks."""

import pytest
import torch

from circuit_atlas.io.corpus import open_corpus
from circuit_atlas.training.errors import TrainingDataError
from circuit_atlas.training.streaming import ModelActivationSource, TokenWindows


def _source(lm, texts, **kw):
    args = dict(input_hook="mlp.hook_in", output_hook="mlp.hook_out", context_length=12,
                model_batch_size=3, buffer_tokens=60, seed=1)
    args.update(kw)
    return ModelActivationSource(lm, open_corpus(texts), **args)


def test_windows_pack_documents_start_with_bos_and_resume():
    from circuit_atlas.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    bos = tok.bos_token_id
    texts = ["the cat", "a dog saw the bird", "one two three"]
    windows = TokenWindows(open_corpus(texts), tok, 4)
    first = [windows.next_window().tolist() for _ in range(3)]
    state = windows.state_dict()
    rest = [windows.next_window().tolist() for _ in range(3)]
    # every window is a prompt-like [BOS, ...] of full length
    assert all(len(w) == 4 and w[0] == bos for w in first + rest)
    # no document token is lost, duplicated or reordered (BOS aside)
    content = [t for w in first + rest for t in w if t != bos]
    stream = [t for text in texts * 3 for t in tok.encode(text, add_special_tokens=False)]
    assert content == stream[:len(content)] and len(content) >= 12
    again = TokenWindows(open_corpus(texts), tok, 4)
    again.load_state_dict(state)
    assert [again.next_window().tolist() for _ in range(3)] == rest


def test_pairs_are_the_mlp_input_and_output_of_every_layer(tiny_lm, word_texts):
    src = _source(tiny_lm, word_texts(30))
    x, y = src.next_batch(50)
    assert x.shape == y.shape == (50, 2, 16)
    # independent of our hook code: run the HF MLP modules on the recorded inputs
    for layer in range(2):
        mlp = tiny_lm.hf_model.model.layers[layer].mlp
        with torch.no_grad():
            torch.testing.assert_close(mlp(x[:, layer]), y[:, layer], rtol=1e-5, atol=1e-5)


def test_one_generation_is_a_permutation_of_the_usable_positions(tiny_lm, word_texts):
    texts = word_texts(10, seed=3)
    src = _source(tiny_lm, texts, buffer_tokens=1)  # one model batch per generation
    windows = TokenWindows(open_corpus(texts), tiny_lm.tokenizer, 12)
    tokens = torch.stack([windows.next_window() for _ in range(3)])
    record = tiny_lm.forward(tokens, input_hook="mlp.hook_in", output_hook="mlp.hook_out")
    keep = torch.ones_like(tokens, dtype=torch.bool)
    keep[:, 0] = False
    keep &= tokens != tiny_lm.tokenizer.bos_token_id
    expected = torch.stack(record.inputs, 2)[keep].detach()
    served, _ = src.next_batch(int(keep.sum()))
    assert served.shape == expected.shape
    order = torch.cdist(served.flatten(1), expected.flatten(1)).argmin(1)
    assert sorted(order.tolist()) == list(range(expected.shape[0]))  # each position exactly once
    torch.testing.assert_close(served, expected[order])
    assert not torch.equal(order, torch.arange(len(order)))  # and actually shuffled


def test_resume_mid_generation_serves_the_same_batches(tiny_lm, word_texts):
    texts = word_texts(40, seed=5)
    a = _source(tiny_lm, texts)
    for _ in range(4):
        a.next_batch(25)
    state = a.state_dict()
    expected = [a.next_batch(25) for _ in range(4)]
    b = _source(tiny_lm, texts)
    b.load_state_dict(state)
    for (xa, ya), (xb, yb) in zip(expected, [b.next_batch(25) for _ in range(4)]):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_ranks_read_disjoint_documents():
    from circuit_atlas.models.tiny import tiny_tokenizer

    texts = [f"{w} {w}" for w in ("cat", "dog", "bird", "fish", "tree", "house")]
    tok = tiny_tokenizer()
    seen = []
    for rank in range(2):
        windows = TokenWindows(open_corpus(texts), tok, 3, rank=rank, world_size=2)
        words = {tok.decode([t]) for _ in range(3) for t in windows.next_window().tolist()}
        seen.append(words - {"<bos>"})
    assert seen[0] == {"cat", "bird", "tree"} and seen[1] == {"dog", "fish", "house"}


def test_corpus_too_small(tiny_lm, word_texts):
    with pytest.raises(TrainingDataError, match="fewer tokens than one context window"):
        _source(tiny_lm, ["the cat"]).next_batch(4)
    with pytest.raises(TrainingDataError, match="fewer than one batch"):
        _source(tiny_lm, word_texts(3)).next_batch(500)
