"""`demo` names the bundled model and transcoders in every loader, not only in `circuit_atlas.load`."""

from __future__ import annotations

import pytest

from circuit_atlas.demo.bundle import demo_model_path, demo_transcoders_path
from circuit_atlas.errors import ModelLoadError
from circuit_atlas.models import load_language_model
from circuit_atlas.transcoders import load_transcoders


def test_language_model_loader_accepts_demo():
    lm = load_language_model("demo")
    # the name is the reference as given, never the install path (it goes into shared files)
    assert lm.name == "demo" and lm.n_layers == 4
    assert str(demo_model_path()) not in repr(lm)


def test_a_local_model_is_named_as_typed(tmp_path, monkeypatch):
    load_language_model("demo").save(tmp_path / "copy")
    monkeypatch.chdir(tmp_path)
    lm = load_language_model("./copy")
    assert lm.name == "./copy"


@pytest.mark.parametrize("ref, kind", [("demo", "clt"), ("demo-clt", "clt"), ("demo-plt", "plt")])
def test_transcoder_loader_accepts_demo_names(ref, kind):
    tc = load_transcoders(ref)
    assert tc.kind == kind and tc.n_layers == 4
    assert tc.scan  # identifies the set in graphs


def test_unknown_demo_kind_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="kinds"):
        demo_transcoders_path("sae")
