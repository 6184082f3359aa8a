"""What many test folders share: seeded tiny models with random transcoders, the model/transcoder
cases the correctness tests run over, prompts, word corpora and a small random graph.

Test modules import the helpers (`from ..conftest import build_model`; the folder conftests
re-export the ones their tests use) or take the fixtures. Everything is seeded and offline.
"""

from __future__ import annotations

import functools
import random

import pytest
import torch

import circuit_atlas
from circuit_atlas.graph import random_graph
from circuit_atlas.models.tiny import WORDS, tiny_language_model
from circuit_atlas.transcoders.random import random_transcoders

# case name -> (family, transcoder kind, skip, input hook, output hook): one of each hook pair
# and family quirk the edge and intervention tests must get exactly right.
CASES: dict[str, tuple[str, str, bool, str, str]] = {
    "llama-plt-skip": ("llama", "plt", True, "mlp.hook_in", "mlp.hook_out"),
    "llama-clt": ("llama", "clt", False, "hook_resid_mid", "hook_mlp_out"),
    "gemma2-plt": ("gemma2", "plt", False, "ln2.hook_normalized", "hook_mlp_out"),
    "gemma2-clt": ("gemma2", "clt", False, "hook_resid_mid", "hook_mlp_out"),
    "gemma2-clt-skip": ("gemma2", "clt", True, "hook_resid_mid", "hook_mlp_out"),
}


def tiny_model(family: str = "llama", kind: str = "clt", *, n_layers: int = 2, d_model: int = 32,
               n_features: int = 32, lm_seed: int = 3, tc_seed: int = 5, skip: bool = False,
               input_hook: str = "hook_resid_mid", output_hook: str = "hook_mlp_out"):
    """A `ReplacementModel`: a seeded tiny `family` model with seeded random `kind` transcoders."""
    lm = tiny_language_model(family, seed=lm_seed, n_layers=n_layers, d_model=d_model)
    tc = random_transcoders(kind, n_layers=n_layers, d_model=d_model, n_features=n_features,
                            skip=skip, seed=tc_seed, input_hook=input_hook, output_hook=output_hook)
    return circuit_atlas.load(lm, tc)


def build_model(case: str, n_layers: int = 3, d_model: int = 48, n_features: int = 64,
                tc_seed: int = 5):
    """A fresh model of one of `CASES` (fresh: some tests move or cast it)."""
    family, kind, skip, input_hook, output_hook = CASES[case]
    return tiny_model(family, kind, n_layers=n_layers, d_model=d_model, n_features=n_features,
                      lm_seed=3, tc_seed=tc_seed, skip=skip, input_hook=input_hook,
                      output_hook=output_hook)


@functools.lru_cache(maxsize=None)
def shared_model(case: str, n_layers: int = 3, d_model: int = 48, n_features: int = 64,
                 tc_seed: int = 5):
    """`build_model`, built once per session for tests that only read the model."""
    return build_model(case, n_layers, d_model, n_features, tc_seed)


def prompt_ids(model, length: int = 7, seed: int = 0) -> torch.Tensor:
    """Random token ids (no special tokens) after the model's BOS."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, model.lm.vocab_size, (length,), generator=generator)
    ids[0] = model.tokenizer.bos_token_id
    return ids


STEER_PROMPT = "the capital of Texas is"


def steering_model():
    """The tiny traced model the steering tests share (2-layer Llama, 32-feature CLT)."""
    return tiny_model("llama", "clt", n_layers=2, d_model=32, n_features=32, lm_seed=3, tc_seed=5)


def word_texts(n_docs: int, seed: int = 0, min_words: int = 1, max_words: int = 40) -> list[str]:
    """Random documents over the tiny tokenizer's words."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS[:60]) for _ in range(rng.randint(min_words, max_words)))
            for _ in range(n_docs)]


@pytest.fixture(params=[c for c in CASES if c != "gemma2-clt-skip"])
def case(request):
    """The four correctness cases (folders add theirs by overriding this fixture)."""
    return request.param


@pytest.fixture(scope="module")
def graph():
    """A small random graph (3 layers, 5 positions, 40 features, 3 logits)."""
    return random_graph(n_layers=3, n_pos=5, n_sel=40, n_logits=3, seed=7)


@pytest.fixture(scope="session")
def demo_model():
    """The bundled demo model with its CLT, loaded once (its users only read it: interventions
    never change weights)."""
    torch.set_num_threads(1)
    return circuit_atlas.load("demo", "demo")
