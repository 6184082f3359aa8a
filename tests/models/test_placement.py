"""Models loaded with accelerate's device_map: the same graphs, interventions and QK attributions.

No GPU here, so the multi-device mechanism these tests exercise is accelerate's offload: layers
mapped to "disk" keep their weights in an offload folder and on PyTorch's `meta` device between
calls, and a hook loads them for each forward. Our frozen forward and the QK attribution read
norm gains and projection weights directly, so they must see real weights there; every result is
compared with the same checkpoint loaded plainly (edges to 1e-5 relative).
"""

from __future__ import annotations

import pytest
import torch

import circuit_atlas
from circuit_atlas.attribution.qk import QKExplainer
from circuit_atlas.errors import ModelLoadError
from circuit_atlas.features.open_store import _fingerprint
from circuit_atlas.interventions import Intervention, generate, intervene
from circuit_atlas.models import load_language_model
from circuit_atlas.models import placement

from ..attribution.test_compact_engine import assert_same_graph
from ..conftest import build_model, prompt_ids

pytest.importorskip("accelerate")


def ties_embeddings(lm) -> bool:
    return bool(lm.text_config.tie_word_embeddings)


def offloading_map(lm) -> dict[str, str]:
    """Every top-level module of the decoder on the CPU, except layer 1 and the LM head: disk
    (with the token embedding when the two share their weight, as in Gemma)."""
    base = lm.adapter.base
    device_map = {f"{base}.{name}": "cpu" for name, _ in lm.module(base).named_children()
                  if name != "layers"}
    for layer in range(lm.n_layers):
        device_map[f"{lm.adapter.layers}.{layer}"] = "disk" if layer == 1 else "cpu"
    device_map[lm.adapter.lm_head] = "disk"
    if ties_embeddings(lm):
        device_map[lm.adapter.embed_tokens] = "disk"
    return device_map


def offloaded_twin(model, tmp_path):
    """The same checkpoint loaded from disk with `offloading_map`, paired with the same transcoders."""
    saved = model.lm.save(tmp_path / "model")
    lm = load_language_model(saved, device_map=offloading_map(model.lm),
                             offload_folder=tmp_path / "offload")
    return circuit_atlas.load(lm, model.transcoders)


@pytest.fixture(scope="module", params=["llama-clt", "gemma2-plt"])
def pair(request, tmp_path_factory):
    model = build_model(request.param)
    return model, offloaded_twin(model, tmp_path_factory.mktemp(request.param))


def test_offloaded_weights_really_are_off_device(pair):
    _, twin = pair
    layer = twin.lm.layer_module(1, twin.lm.adapter.layer_mlp)
    assert all(p.is_meta for p in layer.parameters()), "layer 1 should be offloaded to disk"
    head = twin.lm.hf_model.get_output_embeddings()
    assert head.weight.is_meta, "the LM head should be offloaded to disk"
    assert twin.lm.device == torch.device("cpu")
    assert placement.is_dispatched(twin.lm.hf_model)


@pytest.mark.parametrize("engine", ["compact", "dense"])
def test_graph_equals_the_plainly_loaded_model(pair, engine):
    model, twin = pair
    tokens = prompt_ids(model, length=9, seed=5)
    plain = circuit_atlas.attribute(model, tokens, engine=engine, progress=False, max_feature_nodes=40)
    spread = circuit_atlas.attribute(twin, tokens, engine=engine, progress=False, max_feature_nodes=40)
    assert plain.adjacency.abs().max() > 0
    assert_same_graph(spread, plain)


def test_interventions_and_logits_match(pair):
    model, twin = pair
    tokens = prompt_ids(model, length=9, seed=2)
    run = model.run(tokens)
    layer, position, feature = (int(v) for v in run.activations.indices()[:, -1])
    assert torch.allclose(twin.run(tokens).logits, run.logits, atol=1e-5)
    for mode in ("free", "constrained"):
        edit = Intervention(layer, position, feature, ablate=True)
        expected = intervene(model, tokens, edit, mode=mode)
        got = intervene(twin, tokens, edit, mode=mode)
        assert not torch.allclose(expected.logits, expected.clean_logits), "the ablation changed nothing"
        assert torch.allclose(got.logits, expected.logits, atol=1e-5), mode


def test_steered_generation_matches(pair):
    """Generation runs transformers' KV-cached forward through accelerate's hooks, with edits."""
    model, twin = pair
    tokens = prompt_ids(model, length=6, seed=4)
    # every third feature of layer 0 held high on the prompt and every generated position
    steer = Intervention(0, slice(1, None), list(range(0, 64, 3)), value=30.0)
    expected = generate(model, tokens, [steer], max_new_tokens=4)
    got = generate(twin, tokens, [steer], max_new_tokens=4)
    assert expected.steered.token_ids != expected.default.token_ids, "the steering changed nothing"
    assert got.default.token_ids == expected.default.token_ids
    assert got.steered.token_ids == expected.steered.token_ids


def test_feature_store_fingerprint_reads_offloaded_weights(pair):
    model, twin = pair
    assert _fingerprint(twin) == _fingerprint(model)


def test_qk_attribution_matches(pair):
    model, twin = pair
    tokens = prompt_ids(model, length=9, seed=1)
    expected = QKExplainer(model, tokens).explain(2, 1, 7, 5)
    got = QKExplainer(twin, tokens).explain(2, 1, 7, 5)
    assert got.score == pytest.approx(expected.score, rel=1e-5)
    assert [t.id for t in got.query_terms] == [t.id for t in expected.query_terms]
    assert torch.allclose(got.values, expected.values, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------- refusals
@pytest.mark.parametrize("text", ["best", '{"model.layers.0": [0]}', "{not json", "{}"])
def test_bad_device_maps_are_refused_before_loading(text):
    with pytest.raises(ModelLoadError, match="device_map"):
        placement.parse_device_map(text)


def test_strategies_and_json_maps_parse():
    assert placement.parse_device_map(" auto") == "auto"
    assert placement.parse_device_map('{"model.layers.0": 0, "lm_head": "disk"}') == {
        "model.layers.0": 0, "lm_head": "disk"}


def test_loading_refuses_conflicting_or_incomplete_requests(tmp_path, monkeypatch):
    saved = build_model("llama-clt").lm.save(tmp_path / "model")
    with pytest.raises(ModelLoadError, match="either device"):
        load_language_model(saved, device="cpu", device_map="auto")
    with pytest.raises(ModelLoadError, match="offload_folder"):
        load_language_model(saved, device_map={"model": "cpu", "lm_head": "disk"})
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="device_map entry 'lm_head': '?cuda:1'? is not available"):
            load_language_model(saved, device_map={"model": "cpu", "lm_head": 1})
    with pytest.raises(ModelLoadError, match="only applies"):
        load_language_model(saved, offload_folder=tmp_path)
    tied = build_model("gemma2-plt").lm.save(tmp_path / "tied")
    with pytest.raises(ModelLoadError, match="ties 'lm_head'"):
        load_language_model(tied, device_map={"model": "cpu", "lm_head": "disk"},
                            offload_folder=tmp_path / "offload")
    monkeypatch.setattr(placement, "_align_module_device", None)
    with pytest.raises(ModelLoadError, match=r"circuit-atlas\[multi-gpu\]"):
        load_language_model(saved, device_map="auto")


def test_a_dispatched_model_is_not_moved_afterwards(pair):
    _, twin = pair
    with pytest.raises(ModelLoadError, match="device_map"):
        twin.lm.to(dtype="bfloat16")
