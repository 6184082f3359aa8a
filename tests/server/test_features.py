"""Feature stores for the feature panel: JSON files, the binary bundle, and the API."""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.io.cantor import cantor_pair
from circuit_atlas.server.app import create_app
from circuit_atlas.server.features import (
    BinaryBundleFeatureProvider,
    FeatureProvider,
    JsonDirFeatureProvider,
    load_feature_provider,
)


def _card(layer: int, index: int) -> dict:
    return {
        "transcoder_id": f"layer{layer}",
        "index": index,
        "top_logits": [" Austin", " Texas"],
        "bottom_logits": [" Paris"],
        "act_min": 0.0,
        "act_max": 4.0,
        "activation_frequency": 0.001,
        "examples_quantiles": [
            {
                "quantile_name": "Top activations",
                "examples": [
                    {
                        "tokens": ["The", " capital", " of", " Texas"],
                        "tokens_acts_list": [0.0, 0.5, 0.0, 4.0],
                        "train_token_ind": 3,
                        "is_repeated_datapoint": False,
                    }
                ],
            }
        ],
    }


def test_json_dir_provider_reads_both_layouts(tmp_path: Path) -> None:
    (tmp_path / "2").mkdir()
    (tmp_path / "2" / "5.json").write_text(json.dumps(_card(2, 5)))
    (tmp_path / f"{cantor_pair(1, 3)}.json").write_text(json.dumps(_card(1, 3)))
    provider = JsonDirFeatureProvider(tmp_path)
    assert isinstance(provider, FeatureProvider)
    assert provider.feature(2, 5)["index"] == 5
    assert provider.feature(1, 3)["transcoder_id"] == "layer1"
    assert provider.feature(0, 0) is None
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "1.json").write_text("{broken")
    with pytest.raises(CircuitAtlasError, match="not valid JSON"):
        provider.feature(3, 1)


def _write_bundle(root: Path, layers: dict[int, list[dict]]) -> None:
    """circuit-tracer's feature bundle, written independently from the docs/graph-json.md §10.3 text."""
    index = {}
    for layer, cards in layers.items():
        blob, offsets = b"", []
        for card in cards:
            offsets.append(len(blob))
            payload = zlib.compress(json.dumps(card).encode())
            blob += struct.pack("<I", len(payload)) + payload
        offsets.append(len(blob))
        name = f"layer_{layer}.bin"
        (root / name).write_bytes(blob)
        index[str(layer)] = {"filename": name, "offsets": offsets}
    (root / "index.json.gz").write_bytes(gzip.compress(json.dumps(index).encode()))


def test_binary_bundle_provider(tmp_path: Path) -> None:
    _write_bundle(tmp_path, {0: [_card(0, i) for i in range(3)], 4: [_card(4, 0)]})
    provider = load_feature_provider(tmp_path)
    assert isinstance(provider, BinaryBundleFeatureProvider)
    assert [provider.feature(0, i)["index"] for i in range(3)] == [0, 1, 2]
    assert provider.feature(4, 0)["transcoder_id"] == "layer4"
    assert provider.feature(0, 3) is None and provider.feature(1, 0) is None


def test_feature_api_with_and_without_store(data_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "features"
    (store / "1").mkdir(parents=True)
    (store / "1" / "2.json").write_text(json.dumps(_card(1, 2)))
    with_store = TestClient(create_app(data_dir, features=load_feature_provider(store)))
    assert with_store.get("/api/graphs").json()["features"] is True
    data = with_store.get("/api/features/1/2").json()
    assert data["available"] and data["feature"]["top_logits"] == [" Austin", " Texas"]
    assert with_store.get("/api/features/1/3").json()["feature"] is None
    assert with_store.get("/api/features/-1/2").status_code == 400

    without = TestClient(create_app(data_dir)).get("/api/features/1/2").json()
    assert without == {"available": False, "layer": 1, "index": 2, "feature": None}


def test_load_feature_provider_rejects_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(CircuitAtlasError, match="not a folder"):
        load_feature_provider(tmp_path / "missing")
