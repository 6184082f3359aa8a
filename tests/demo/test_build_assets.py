"""`python -m circuit_atlas.demo.build_assets --quick`: the whole asset pipeline, tiny, as CI runs it."""

from __future__ import annotations

import json
import time

import pytest
import torch

import circuit_atlas
from circuit_atlas.demo import bundle
from circuit_atlas.demo.build_assets import main
from circuit_atlas.demo.labels import Vocabulary, auto_label, ExampleView
from circuit_atlas.features import FeatureStore
from circuit_atlas.transcoders import load_transcoders

from .paths import absolute_paths


@pytest.fixture(scope="module")
def quick_build(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("quick") / "assets"
    started = time.perf_counter()
    code = main(["--quick", "--out", str(out), "--quiet"])
    return code, out, time.perf_counter() - started


def test_quick_build_writes_every_asset_within_a_minute(quick_build):
    code, out, seconds = quick_build
    assert code == 0 and seconds < 60
    report = json.loads((out / "transcoders" / "report.json").read_text())
    for kind in ("clt", "plt"):
        tc = load_transcoders(str(out / "transcoders" / kind))
        assert tc.kind == kind and tc.n_features == 64 and tc.n_layers == 4
        assert (tc.input_hook, tc.output_hook) == ("hook_resid_mid", "hook_mlp_out")
        held = report["sets"][kind]["held_out"]
        assert len(held["fvu"]) == 4 and all(v >= 0 for v in held["fvu"])
    files = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in {".bin", ".pt", ".pkl", ".pth"}]


def test_quick_build_dashboards_carry_the_rule_labels(quick_build):
    _, out, _ = quick_build
    model = circuit_atlas.load(str(bundle.demo_model_path()), str(out / "transcoders" / "clt"))
    vocab = Vocabulary.from_world(bundle.demo_world())
    with FeatureStore(out / "features" / "clt") as store:
        assert store.complete and store.n_features == model.transcoders.n_features
        labels = store.labels()
        # every stored label is what the rule says for that card, and unlabelled cards get none
        for layer in range(store.n_layers):
            for feature in range(0, store.n_features, 7):
                card = store.card(layer, feature)
                want = auto_label([ExampleView(e.tokens, e.focus) for e in card.top_examples], vocab)
                assert labels.get((layer, feature)) == want


def test_quick_build_records_the_model_as_demo_and_no_path(quick_build):
    """The bundled model is recorded as "demo" (as a user types it), never as the folder it was
    loaded from: that path is the build machine's and would ship inside the assets."""
    _, out, _ = quick_build
    with FeatureStore(out / "features" / "clt") as store:
        assert store.meta["model_name"] == "demo"
    assert json.loads((out / "transcoders" / "report.json").read_text())["model"] == "demo"
    assert absolute_paths(out) == []


def test_quick_mode_refuses_to_overwrite_the_shipped_assets(capsys):
    assert main(["--quick"]) == 2
    assert "--out" in capsys.readouterr().err


def test_dashboards_only_rebuild_swaps_in_an_equal_store(quick_build):
    """`--dashboards-only` rebuilds the stores of the existing transcoders in place: the same
    labels and cards (the build is seeded), and no half-built folder left behind."""
    _, out, _ = quick_build
    folder = out / "features" / "clt"
    with FeatureStore(folder) as store:
        labels_before = store.labels()
        card_before = store.card(1, 3)
    assert main(["--quick", "--out", str(out), "--quiet", "--dashboards-only"]) == 0
    assert not list((out / "features").glob("*.rebuilding"))
    with FeatureStore(folder) as store:
        assert store.labels() == labels_before
        card = store.card(1, 3)
        assert [e.tokens for e in card.top_examples] == [e.tokens for e in card_before.top_examples]


def test_shipped_dashboards_read_as_text_with_spaces():
    """Dashboard token strings keep word-start spaces: joined examples are readable sentences."""
    with FeatureStore(bundle.demo_features_path("clt")) as store:
        regions = [key for key, label in store.labels().items() if "(region" in label][:5]
        examples = [e for key in regions for e in store.card(*key).top_examples]
    texts = ["".join(e.tokens).replace("<bos>", "").strip() for e in examples]
    assert texts and all(" lies in " in t or " is " in t for t in texts), texts[:3]
