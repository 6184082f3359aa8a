"""Shared pieces: a tiny model with random transcoders, word corpora, and a brute-force pass.

The brute-force pass is written independently of the builder: it cuts documents into windows by
the documented rule (BOS + up to context_len-1 document tokens, no overlap), runs each window on
its own through `ReplacementModel.run` (the path attribution uses, which zeroes position 0), and
lists every (document, window, position, activation) of every feature.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

N_LAYERS, D_MODEL, N_FEATURES = 2, 16, 24


def make_model(kind: str = "plt", seed: int = 1, n_features: int = N_FEATURES, d_model: int = D_MODEL):
    import circuit_atlas
    from circuit_atlas.models.tiny import tiny_language_model
    from circuit_atlas.transcoders.random import random_transcoders

    torch.set_num_threads(1)
    lm = tiny_language_model("llama", n_layers=N_LAYERS, d_model=D_MODEL, seed=0)
    tc = random_transcoders(kind, n_layers=N_LAYERS, d_model=d_model, n_features=n_features,
                            seed=seed, input_hook="hook_resid_mid", output_hook="hook_mlp_out")
    return circuit_atlas.load(lm, tc)


def word_texts(n_docs: int, seed: int = 0, max_words: int = 40) -> list[str]:
    from circuit_atlas.models.tiny import WORDS

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS[:60]) for _ in range(rng.randint(1, max_words)))
            for _ in range(n_docs)]


@pytest.fixture(scope="module")
def plt_model():
    return make_model("plt")


@pytest.fixture(scope="module")
def clt_model():
    return make_model("clt", seed=2)


@dataclass
class BruteForce:
    """Every positive activation, plus per-window data, from windows run one at a time."""

    windows: dict = field(default_factory=dict)  # (doc, win) -> (token ids, acts [L, P, F])
    n_tokens: int = 0

    def occurrences(self, layer: int, feature: int) -> list[tuple[float, int, int, int]]:
        """(activation, doc, window, position) of every positive activation, corpus order."""
        found = []
        for (doc, win), (_, acts) in sorted(self.windows.items()):
            column = acts[layer, :, feature]
            for pos in np.flatnonzero(column > 0):
                found.append((float(column[pos]), doc, win, int(pos)))
        return found

    def top(self, layer: int, feature: int, k: int, before: int = 15,
            after: int = 5) -> list[tuple[float, int, int, int]]:
        """Top windows by their maximum (first position on ties), ties by (doc, window), each
        context shown once: a window whose tokens around its maximum (`before` / `after`, with
        the same focus) equal those of a better window is left out."""
        best = []
        for (doc, win), (ids, acts) in self.windows.items():
            column = acts[layer, :, feature]
            pos = int(np.argmax(column))
            if column[pos] > 0:
                best.append((float(column[pos]), doc, win, pos))
        best.sort(key=lambda t: (-t[0], t[1], t[2]))
        kept, seen = [], set()
        for value, doc, win, pos in best:
            ids = self.windows[(doc, win)][0]
            lo, hi = max(0, pos - before), min(len(ids), pos + after + 1)
            context = (tuple(ids[lo:hi]), pos - lo)
            if context not in seen:
                seen.add(context)
                kept.append((value, doc, win, pos))
        return kept[:k]


def brute_force(model, texts: list[str], context_len: int) -> BruteForce:
    tokenizer = model.tokenizer
    bos = tokenizer.bos_token_id
    result = BruteForce()
    docs = [t for t in texts if t.strip()]
    for doc, text in enumerate(docs):
        content = tokenizer.encode(text, add_special_tokens=False)
        step = context_len - 1
        for win in range(-(-len(content) // step)):
            ids = [bos] + content[win * step:(win + 1) * step]
            run = model.run(torch.tensor(ids))
            acts = run.activations.to_dense().float().numpy()  # [L, P, F], position 0 zeroed
            result.windows[(doc, win)] = (ids, acts)
            result.n_tokens += len(ids) - 1
    return result


@pytest.fixture(scope="session")
def helpers():
    """The helpers above, for test modules (importlib import mode cannot import conftest)."""
    from types import SimpleNamespace

    return SimpleNamespace(make_model=make_model, word_texts=word_texts, brute_force=brute_force,
                           N_LAYERS=N_LAYERS, N_FEATURES=N_FEATURES, D_MODEL=D_MODEL)


@pytest.fixture(scope="module")
def saved_inputs(tmp_path_factory):
    """A tiny model and PLT transcoders saved to disk, and a folder corpus of 30 documents."""
    from types import SimpleNamespace

    root = tmp_path_factory.mktemp("inputs")
    model = make_model("plt")
    model.lm.save(root / "model")
    model.transcoders.save_native(root / "transcoders")
    corpus = root / "corpus"
    corpus.mkdir()
    for i, text in enumerate(word_texts(30, seed=11)):
        (corpus / f"doc{i:03d}.txt").write_text(text)
    return SimpleNamespace(model=root / "model", transcoders=root / "transcoders", corpus=corpus,
                           loaded=model)


def dump_store(folder) -> dict:
    """Every row of every table of a store, sorted (for equality between builds)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{folder / 'features.sqlite'}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall()) for t in sorted(tables)}
    finally:
        conn.close()


@pytest.fixture(scope="session")
def dump():
    return dump_store
