"""The shipped demo assets record no path of the machine that built them (issue 15: a model is
recorded as the user typed it, "demo" for the bundled one)."""

from __future__ import annotations

import json

from circuit_atlas.demo import bundle
from circuit_atlas.features import FeatureStore

from .paths import absolute_paths


def test_no_shipped_demo_file_records_an_absolute_path():
    assert absolute_paths(bundle.ASSETS_DIR) == []


def test_the_scan_finds_paths_in_json_and_store_metadata(tmp_path):
    """The check above can fail: a planted path is found in each kind of file it reads."""
    (tmp_path / "a.json").write_text(json.dumps({"model": {"dir": "/home/someone/model"}}))
    (tmp_path / "b.json").write_text(json.dumps(["C:\\\\models\\\\x"]))
    found = absolute_paths(tmp_path)
    assert len(found) == 2 and "/home/someone/model" in found[0]


def test_shipped_stores_name_the_demo_model_and_still_open():
    for kind in bundle.TRANSCODER_KINDS:
        with FeatureStore(bundle.demo_features_path(kind)) as store:
            assert store.meta["model_name"] == "demo"
            assert store.complete and store.card(0, 0) is not None
