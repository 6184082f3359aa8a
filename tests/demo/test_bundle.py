"""The model shipped in the package: it loads with plain transformers and composes two hops.

The accuracy here is computed without our evaluate module: prompts are tokenised by hand from the
vocabulary (BOS + one token per word) and the answer must be the argmax next token.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from circuit_atlas.demo import bundle, lexicon

MAX_ASSET_BYTES = 40 * 1024 * 1024


@pytest.fixture(scope="module")
def hf():
    torch.set_num_threads(1)
    path = bundle.demo_model_path()
    return AutoModelForCausalLM.from_pretrained(str(path)).eval(), \
        AutoTokenizer.from_pretrained(str(path))


def _hand_ids(vocab: dict[str, int], prompt: str) -> list[int]:
    return [vocab["<bos>"]] + [vocab["▁" + w] for w in prompt.split()]


def test_bundled_model_composes_held_out_two_hop(hf):
    model, tok = hf
    vocab = tok.get_vocab()
    items = bundle.two_hop_eval_items()
    assert len(items) >= 30
    batch = torch.tensor([_hand_ids(vocab, i.prompt) for i in items])  # all the same length
    with torch.no_grad():
        predicted = model(input_ids=batch).logits[:, -1].argmax(-1).tolist()
    correct = [p == vocab["▁" + i.answer] for p, i in zip(predicted, items)]
    accuracy = sum(correct) / len(items)
    assert accuracy >= 0.8, f"held-out two-hop accuracy {accuracy:.3f}"
    # the figure recorded at training time (rounded to 4 places) is the one we measure now
    assert accuracy == pytest.approx(bundle.demo_metrics()["two_hop_held_out"], abs=1e-4)


def test_eval_items_agree_with_the_lexicon_and_are_held_out():
    world = bundle.demo_world()
    for item in bundle.two_hop_eval_items():
        capital, cities = lexicon.REGIONS[item.region]
        assert item.city in cities and item.answer == item.capital == capital
        assert item.city in world.held_out_cities
        assert item.swap_capital == lexicon.REGIONS[item.swap_region][0] != capital
    assert bundle.default_two_hop_item().prompt == bundle.DEFAULT_PROMPT
    assert bundle.default_two_hop_item().answer == "austin"


def test_assets_are_small_safetensors_and_json():
    files = [p for p in bundle.ASSETS_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= MAX_ASSET_BYTES
    assert not [p for p in files if p.suffix in {".bin", ".pt", ".pkl", ".pth"}]
    json.loads(bundle.demo_world_path().read_text())


def test_demo_ref_resolves_to_the_bundled_directory():
    assert bundle.resolve_model_ref("demo") == str(bundle.demo_model_path())
    assert bundle.resolve_model_ref("meta-llama/Llama-3.2-1B") == "meta-llama/Llama-3.2-1B"


def test_reading_the_bundled_feature_store_leaves_it_unchanged():
    """Readers open the database read-only: the shipped file must stay byte-identical (a
    read-write open would switch its journal mode and leave WAL files in the package)."""
    import hashlib

    from circuit_atlas.features import FeatureStore

    folder = bundle.demo_features_path("clt")
    before = hashlib.sha256((folder / "features.sqlite").read_bytes()).hexdigest()
    listing = sorted(p.name for p in folder.iterdir())
    with FeatureStore(folder) as store:
        layer, feature = next(iter(store.labels()))
        assert store.card(layer, feature).top_examples  # a real read of the database
    assert hashlib.sha256((folder / "features.sqlite").read_bytes()).hexdigest() == before
    assert sorted(p.name for p in folder.iterdir()) == listing
