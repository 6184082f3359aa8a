"""Shared fixtures: hand-written files in each on-disk format, built with the official
`safetensors`/`numpy` writers (never with our own writer), so reader tests are independent."""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
import yaml
from huggingface_hub.errors import EntryNotFoundError
from safetensors.torch import save_file


def rand(gen: torch.Generator, *shape: int, std: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * std


def write_yaml(path: Path, data: dict) -> None:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")


class Raw:
    """Raw weights of a fixture set, in the layout of the *file* it was written to."""

    def __init__(self, **kw: object) -> None:
        self.__dict__.update(kw)


@pytest.fixture
def make_ct_plt(tmp_path: Path):
    """circuit-tracer PLT dir (docs/formats.md §5.3): layer_i.safetensors + config.yaml."""

    def make(L: int = 3, d: int = 6, F: int = 10, *, threshold: bool = False, skip: bool = False,
             config_extra: dict | None = None, seed: int = 0, dtype=torch.float32, name: str = "plt") -> tuple[Path, Raw]:
        gen = torch.Generator().manual_seed(seed)
        root = tmp_path / name
        root.mkdir()
        layers = []
        for i in range(L):
            t = {"W_enc": rand(gen, F, d, std=d ** -0.5), "W_dec": rand(gen, F, d),
                 "b_enc": rand(gen, F, std=0.1), "b_dec": rand(gen, d)}
            if threshold:
                t["activation_function.threshold"] = torch.rand(F, generator=gen) * 0.3
            if skip:
                t["W_skip"] = rand(gen, d, d)
            t = {k: v.to(dtype) for k, v in t.items()}
            save_file(t, str(root / f"layer_{i}.safetensors"))
            layers.append(t)
        config = {"model_kind": "transcoder_set", "feature_input_hook": "hook_resid_mid",
                  "feature_output_hook": "mlp.hook_out", "model_name": "toy/model"}
        config.update(config_extra or {})
        write_yaml(root / "config.yaml", config)
        return root, Raw(layers=layers, L=L, d=d, F=F)

    return make


@pytest.fixture
def make_ct_clt(tmp_path: Path):
    """circuit-tracer CLT dir (docs/formats.md §5.4): W_enc_i / W_dec_i files + config.yaml."""

    def make(L: int = 3, d: int = 6, F: int = 10, *, threshold: bool = False, seed: int = 1,
             name: str = "clt") -> tuple[Path, Raw]:
        gen = torch.Generator().manual_seed(seed)
        root = tmp_path / name
        root.mkdir()
        enc, dec = [], []
        for i in range(L):
            e = {f"W_enc_{i}": rand(gen, F, d, std=d ** -0.5), f"b_enc_{i}": rand(gen, F, std=0.1),
                 f"b_dec_{i}": rand(gen, d)}
            if threshold:
                e[f"threshold_{i}"] = torch.rand(F, generator=gen) * 0.3
            w = {f"W_dec_{i}": rand(gen, F, L - i, d)}
            save_file(e, str(root / f"W_enc_{i}.safetensors"))
            save_file(w, str(root / f"W_dec_{i}.safetensors"))
            enc.append(e)
            dec.append(w[f"W_dec_{i}"])
        write_yaml(root / "config.yaml", {"model_kind": "cross_layer_transcoder",
                                          "feature_input_hook": "hook_resid_mid",
                                          "feature_output_hook": "hook_mlp_out"})
        return root, Raw(enc=enc, dec=dec, L=L, d=d, F=F)

    return make


@pytest.fixture
def make_gemmascope_npz(tmp_path: Path):
    """GemmaScope v1 set (docs/formats.md §6.1): params.npz per layer, W_enc stored [d, F], listed in config."""

    def make(L: int = 2, d: int = 5, F: int = 9, seed: int = 2) -> tuple[Path, Raw]:
        rng = np.random.default_rng(seed)
        root = tmp_path / "gs"
        layers, entries = [], []
        for i in range(L):
            sub = root / f"layer_{i}" / "width_16k" / "average_l0_7"
            sub.mkdir(parents=True)
            arrays = {"W_enc": rng.normal(size=(d, F)).astype(np.float32) / np.sqrt(d),
                      "W_dec": rng.normal(size=(F, d)).astype(np.float32),
                      "b_enc": rng.normal(size=F).astype(np.float32) * 0.1,
                      "b_dec": rng.normal(size=d).astype(np.float32),
                      "threshold": (rng.random(F) * 0.3).astype(np.float32)}
            np.savez(sub / "params.npz", **arrays)
            layers.append(arrays)
            entries.append(str((sub / "params.npz").relative_to(root)))
        write_yaml(root / "config.yaml", {"model_kind": "transcoder_set", "model_name": "google/gemma-2-2b",
                                          "feature_input_hook": "ln2.hook_normalized",
                                          "feature_output_hook": "hook_mlp_out", "transcoders": entries})
        return root, Raw(layers=layers, L=L, d=d, F=F)

    return make


@pytest.fixture
def make_gemmascope2(tmp_path: Path):
    """GemmaScope-2 PLT (docs/formats.md §6.2) or CLT (§6.3) set: lower-case keys, w_enc [d, F], affine skip [d_in, d_out]."""

    def make(kind: str = "plt", L: int = 3, d: int = 5, F: int = 8, *, skip: bool = True, seed: int = 3,
             n_listed: int | None = None) -> tuple[Path, Raw]:
        gen = torch.Generator().manual_seed(seed)
        root = tmp_path / f"gs2_{kind}"
        root.mkdir()
        files = []
        for i in range(L):
            t = {"w_enc": rand(gen, d, F, std=d ** -0.5),
                 "w_dec": rand(gen, F, d) if kind == "plt" else rand(gen, F, L, d),
                 "b_enc": rand(gen, F, std=0.1), "b_dec": rand(gen, d),
                 "threshold": torch.rand(F, generator=gen) * 0.3}
            if skip:
                t["affine_skip_connection"] = rand(gen, d, d)
            save_file(t, str(root / f"params_layer_{i}.safetensors"))
            files.append(t)
        entries = [f"params_layer_{i}.safetensors" for i in range(L)]
        if n_listed is not None:
            entries = [f"params_layer_{min(i, L - 1)}.safetensors" for i in range(n_listed)]
        write_yaml(root / "config.yaml", {
            "model_kind": "transcoder_set" if kind == "plt" else "cross_layer_transcoder",
            "feature_input_hook": "mlp.hook_in", "feature_output_hook": "hook_mlp_out", "transcoders": entries})
        return root, Raw(files=files, L=L, d=d, F=F)

    return make


# ----------------------------------------------------------------------------- fake hub


class FakeHub:
    """Serves files from `root/<org>/<repo>/...`; records what was requested."""

    def __init__(self, root: Path) -> None:
        self.root, self.files, self.patterns = root, [], []

    def repo(self, repo_id: str) -> Path:
        return self.root / repo_id

    def hf_hub_download(self, repo_id, filename, *, revision=None, **_):
        path = self.repo(repo_id) / filename
        self.files.append((repo_id, filename, revision))
        if not path.is_file():
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(path)

    def snapshot_download(self, repo_id, *, revision=None, allow_patterns=None, **_):
        self.patterns.append((repo_id, tuple(allow_patterns), revision))
        snap = self.root.parent / "snapshots" / repo_id.replace("/", "--")
        for path in self.repo(repo_id).rglob("*"):
            rel = path.relative_to(self.repo(repo_id)).as_posix()
            if path.is_file() and any(fnmatch.fnmatch(rel, p) for p in allow_patterns):
                (snap / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, snap / rel)
        return str(snap)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    fake = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake.hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    return fake
