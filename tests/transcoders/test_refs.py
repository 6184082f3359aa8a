"""Reference strings (docs/formats.md §2) and the hub code path, driven by a fake hub over local
folders (the `hub` fixture of conftest.py)."""

from __future__ import annotations

import shutil

import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub.errors import LocalEntryNotFoundError

from circuit_atlas.errors import TranscoderFormatError
from circuit_atlas.transcoders import load_transcoders, parse_reference, random_transcoders
from circuit_atlas.transcoders.refs import parse_hf_file_uri


@pytest.mark.parametrize("text,repo,sub,rev,scan", [
    ("org/repo", "org/repo", None, None, "org/repo"),
    ("org/repo/a/b", "org/repo", "a/b", None, "org/repo//a/b"),
    ("org/repo@v1", "org/repo", None, "v1", "org/repo@v1"),
    ("org/repo/a/b@rev@x", "org/repo", "a/b", "rev@x", "org/repo//a/b@rev@x"),  # after the first '@'
    ("hf://org/repo/a/b?revision=r2", "org/repo", "a/b", "r2", "org/repo//a/b@r2"),
    ("hf://org/repo", "org/repo", None, None, "org/repo"),
    ("gemma", "mwhanna/gemma-scope-transcoders", None, None, "mwhanna/gemma-scope-transcoders"),
    ("llama", "mntss/transcoder-Llama-3.2-1B", None, None, "mntss/transcoder-Llama-3.2-1B"),
    ("mntss/clt@sp10-32k", "mntss/clt", None, "sp10-32k", "mntss/clt@sp10-32k"),
])
def test_parse_hub_references(text, repo, sub, rev, scan):
    ref = parse_reference(text)
    assert (ref.repo_id, ref.subfolder, ref.revision, ref.scan, ref.local_path) == (repo, sub, rev, scan, None)


def test_parse_local_references(tmp_path, monkeypatch):
    assert parse_reference(str(tmp_path)).local_path == tmp_path.resolve()
    assert parse_reference(tmp_path).scan is None
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sets" / "mine").mkdir(parents=True)
    assert parse_reference("sets/mine").local_path == (tmp_path / "sets" / "mine").resolve()  # existing dir wins
    assert parse_reference("./sets").local_path == (tmp_path / "sets").resolve()


@pytest.mark.parametrize("text,why", [
    ("", "empty"), ("   ", "empty"), ("justname", "org/repo"), ("org/repo@", "revision"),
    ("org//repo", "not a valid"), ("org/re po", "space"), ("hf://org", "org/repo"),
    ("hf://org/repo/x?rev=1", "unknown query"), ("org/repo/../x", "'..'"), ("-org/repo", "not a valid"),
])
def test_bad_references(text, why):
    with pytest.raises(TranscoderFormatError, match=why):
        parse_reference(text)


def test_missing_local_dir_and_file(tmp_path):
    with pytest.raises(TranscoderFormatError, match="does not exist"):
        load_transcoders(str(tmp_path / "nope"))
    (tmp_path / "f.safetensors").write_bytes(b"")
    with pytest.raises(TranscoderFormatError, match="is a file"):
        load_transcoders(str(tmp_path / "f.safetensors"))


def test_hf_file_uri():
    assert parse_hf_file_uri("hf://g/r/layer_0/params.npz?revision=abc") == ("g/r", "layer_0/params.npz", "abc")
    with pytest.raises(TranscoderFormatError, match="file path"):
        parse_hf_file_uri("hf://g/r")


def test_hub_circuit_tracer_plt_in_subfolder(hub):
    tc = random_transcoders("plt", 2, 4, 8, activation="jumprelu", seed=9)
    tc.save_circuit_tracer(hub.repo("org/sets") / "width_8")
    (hub.repo("org/sets") / "other").mkdir()
    back = load_transcoders("org/sets/width_8@v2")
    assert back.scan == "org/sets//width_8@v2"  # docs/formats.md §2: overrides any config value
    assert torch.equal(back.encoder_weight(1), tc.encoder_weight(1))
    assert hub.patterns == [("org/sets", ("width_8/config.yaml", "width_8/layer_*.safetensors"), "v2")]
    assert ("org/sets", "width_8/circuit_atlas_transcoders.json", "v2") in hub.files  # native probed first


def test_hub_native_set(hub):
    tc = random_transcoders("clt", 2, 4, 8, seed=3)
    tc.save_native(hub.repo("me/clt"))
    back = load_transcoders("hf://me/clt")
    assert back.kind == "clt" and back.scan == "me/clt"
    assert torch.equal(back.decoder_rows(0, [1, 5], 1), tc.decoder_rows(0, [1, 5], 1))


def test_hub_gemmascope_list_of_hf_uris(hub, make_gemmascope_npz):
    root, raw = make_gemmascope_npz(L=2)
    shutil.copytree(root, hub.repo("google/gs-weights"))
    config = yaml.safe_load((root / "config.yaml").read_text())
    config["transcoders"] = [f"hf://google/gs-weights/{e}?revision=r1" for e in config["transcoders"]]
    hub.repo("mw/gemma-scope-transcoders").mkdir(parents=True)
    (hub.repo("mw/gemma-scope-transcoders") / "config.yaml").write_text(yaml.safe_dump(config))
    tc = load_transcoders("mw/gemma-scope-transcoders")
    assert tc.n_layers == 2 and tc.activation_name == "jumprelu"
    assert torch.allclose(tc.encoder_rows(1, [3])[0], torch.from_numpy(raw.layers[1]["W_enc"][:, 3]).float())
    assert ("google/gs-weights", "layer_1/width_16k/average_l0_7/params.npz", "r1") in hub.files
    assert hub.patterns == []  # listed files only, no snapshot


def test_hub_failures_name_the_repo(hub, monkeypatch):
    with pytest.raises(TranscoderFormatError, match="no/such-repo@main.*config.yaml"):
        load_transcoders("no/such-repo@main")

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot reach the hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(TranscoderFormatError, match="circuit_atlas_transcoders.json.*org/x.*unreachable"):
        load_transcoders("org/x")  # online but unreachable: no second probe (it would retry again)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TranscoderFormatError, match="'config.yaml'.*org/x"):
        load_transcoders("org/x")  # offline: the cache may hold config.yaml, so it is tried too
