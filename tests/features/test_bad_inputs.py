"""Bad inputs give clear errors (or documented replacement) and never a corrupted store."""

from __future__ import annotations

import pathlib
import sqlite3

import pytest
import torch

from circuit_atlas.errors import CircuitAtlasError, ShapeMismatchError
from circuit_atlas.features import (
    BuildSettings,
    FeatureBuildError,
    FeatureStore,
    FeatureStoreError,
    build_feature_store,
    open_feature_corpus,
)
from circuit_atlas.io.corpus import CorpusError, TextListCorpus

SETTINGS = BuildSettings(context_len=10, top_k=4, n_samples=6)


def _integrity_ok(folder) -> bool:
    conn = sqlite3.connect(folder / "features.sqlite")
    try:
        return conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()


def _corpus(folder, texts) -> pathlib.Path:
    folder.mkdir()
    for i, text in enumerate(texts):
        path = folder / f"{i:02d}.txt"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return folder


@pytest.fixture(scope="module")
def model(helpers):
    return helpers.make_model("plt")


def test_empty_corpus_is_refused_before_a_store_exists(model, tmp_path):
    corpus = _corpus(tmp_path / "c", ["", "  \n\n ", "\n"])
    with pytest.raises(CorpusError, match="has no documents"):
        build_feature_store(model, corpus, tmp_path / "out", SETTINGS, progress=False)
    assert not (tmp_path / "out").exists()
    (tmp_path / "none").mkdir()
    with pytest.raises(CorpusError, match="no .txt files"):
        build_feature_store(model, tmp_path / "none", tmp_path / "out", SETTINGS, progress=False)
    with pytest.raises(CorpusError, match="does not exist"):
        open_feature_corpus(tmp_path / "missing.jsonl")


def test_unreadable_file_stops_cleanly_and_the_rerun_completes(model, helpers, tmp_path, dump, monkeypatch):
    """Blocks of 4 documents: the block holding document 7 fails while it is read, after the
    first block was processed and committed."""
    settings = BuildSettings(context_len=10, top_k=4, n_samples=6, block_documents=4)
    texts = helpers.word_texts(12, seed=4)
    corpus = _corpus(tmp_path / "c", texts)
    bad = corpus / "07.txt"
    real_read_text = pathlib.Path.read_text

    def read_text(self, *args, **kwargs):
        if self == bad:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", read_text)
    with pytest.raises(FeatureBuildError, match=r"(?s)07\.txt: cannot read \(Permission denied\).*rerun"):
        build_feature_store(model, corpus, tmp_path / "out", settings, batch_size=2,
                            commit_interval=0, progress=False)
    assert _integrity_ok(tmp_path / "out")
    with FeatureStore(tmp_path / "out") as partial:
        assert not partial.complete and 0 < partial.meta["progress"]["doc"] < 4

    monkeypatch.setattr(pathlib.Path, "read_text", real_read_text)
    report = build_feature_store(model, corpus, tmp_path / "out", settings, batch_size=2,
                                 commit_interval=0, progress=False)
    assert report.resumed and report.complete and report.documents == 12
    build_feature_store(model, corpus, tmp_path / "straight", settings, batch_size=2, progress=False)
    assert dump(tmp_path / "out") == dump(tmp_path / "straight")


def test_non_utf8_bytes_stop_with_the_file_name_or_are_replaced(model, helpers, tmp_path):
    texts = helpers.word_texts(6, seed=2)
    texts[3] = b"the cat \xff\xfe said caf\xe9 two"
    corpus = _corpus(tmp_path / "c", texts)
    with pytest.raises(FeatureBuildError, match=r"(?s)03\.txt: not UTF-8.*--encoding-errors replace"):
        build_feature_store(model, corpus, tmp_path / "strict", SETTINGS, progress=False)
    assert _integrity_ok(tmp_path / "strict")

    replaced = open_feature_corpus(corpus, encoding_errors="replace")
    assert list(replaced)[3] == "the cat \ufffd\ufffd said caf\ufffd two"
    report = build_feature_store(model, replaced, tmp_path / "replace", SETTINGS, progress=False)
    assert report.complete and report.documents == 6

    jsonl = tmp_path / "c.jsonl"
    jsonl.write_bytes(b'{"text": "the cat"}\n{"text": "a \xff dog"}\n')
    assert list(open_feature_corpus(jsonl, encoding_errors="replace")) == ["the cat", "a \ufffd dog"]
    with pytest.raises(CorpusError, match=r"c\.jsonl, line \d+: not UTF-8"):
        list(open_feature_corpus(jsonl))


def test_wrong_transcoder_model_pairing(helpers, tmp_path, dump):
    import circuit_atlas
    from circuit_atlas.transcoders.random import random_transcoders

    model = helpers.make_model("plt")
    narrow = random_transcoders("plt", n_layers=2, d_model=8, n_features=24,
                                input_hook="hook_resid_mid", output_hook="hook_mlp_out")
    with pytest.raises(ShapeMismatchError, match="d_model=8"):
        circuit_atlas.load(model.lm, narrow)

    texts = helpers.word_texts(4)
    build_feature_store(model, texts, tmp_path, SETTINGS, progress=False)
    before = dump(tmp_path)
    other = helpers.make_model("plt", seed=99)  # same shapes, other weights
    with pytest.raises(FeatureStoreError, match="weights"):
        build_feature_store(other, texts, tmp_path, SETTINGS, progress=False)
    wider = helpers.make_model("plt", n_features=32)
    with pytest.raises(FeatureStoreError, match="transcoders.n_features: stored 24, now 32"):
        build_feature_store(wider, texts, tmp_path, SETTINGS, progress=False)
    with pytest.raises(FeatureStoreError, match="settings.context_len: stored 10, now 12"):
        build_feature_store(model, texts, tmp_path, BuildSettings(context_len=12, top_k=4, n_samples=6),
                            progress=False)
    with pytest.raises(FeatureStoreError, match="corpus.description"):
        build_feature_store(model, TextListCorpus(texts, description="other texts"), tmp_path,
                            SETTINGS, progress=False)
    assert dump(tmp_path) == before


def test_files_that_are_not_stores_are_left_alone(model, tmp_path):
    (tmp_path / "junk").mkdir()
    junk = tmp_path / "junk" / "features.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(FeatureStoreError, match="cannot be opened|not a circuit-atlas"):
        build_feature_store(model, ["the cat"], tmp_path / "junk", SETTINGS, progress=False)
    assert junk.read_bytes() == b"this is not a database" * 100

    (tmp_path / "other").mkdir()
    conn = sqlite3.connect(tmp_path / "other" / "features.sqlite")
    conn.execute("CREATE TABLE mine (x)")
    conn.commit()
    conn.close()
    with pytest.raises(FeatureStoreError, match="not a circuit-atlas feature store"):
        build_feature_store(model, ["the cat"], tmp_path / "other", SETTINGS, progress=False)
    with pytest.raises(FeatureStoreError, match="not a circuit-atlas feature store"):
        FeatureStore(tmp_path / "other")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FeatureStoreError, match="not a folder"):
        build_feature_store(model, ["the cat"], tmp_path / "file", SETTINGS, progress=False)


def test_bad_settings_and_non_finite_activations(helpers, tmp_path):
    model = helpers.make_model("plt")
    with pytest.raises(FeatureBuildError, match="--context-len must lie in 2..64"):
        build_feature_store(model, ["the cat"], tmp_path / "a", BuildSettings(context_len=65), progress=False)
    with pytest.raises(FeatureBuildError, match="top_k must be at least 1"):
        build_feature_store(model, ["the cat"], tmp_path / "a", BuildSettings(top_k=0), progress=False)
    with pytest.raises(FeatureBuildError, match="--batch-size"):
        build_feature_store(model, ["the cat"], tmp_path / "a", SETTINGS, batch_size=0, progress=False)
    assert not (tmp_path / "a").exists()

    broken = helpers.make_model("plt")
    with torch.no_grad():
        broken.transcoders.encoder_weight(1)[3, 0] = float("nan")
    with pytest.raises(FeatureBuildError, match="non-finite feature activations at layer 1 in document 0"):
        build_feature_store(broken, ["the cat sat", "a dog"], tmp_path / "nan", SETTINGS, progress=False)
    assert _integrity_ok(tmp_path / "nan")
    with FeatureStore(tmp_path / "nan") as store:
        assert store.meta["progress"]["tokens"] == 0 and not store.complete


def test_hub_dataset_needs_the_datasets_package(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(CorpusError, match="needs the `datasets` package"):
        open_feature_corpus("hf:wikitext:wikitext-2-raw-v1")
    with pytest.raises(CorpusError, match="not a local file or folder"):
        open_feature_corpus("some-org/some-dataset")


def test_a_second_builder_on_the_same_store_is_refused(model, tmp_path):
    import fcntl
    import os

    tmp_path.mkdir(exist_ok=True)
    fd = os.open(tmp_path / ".build.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(FeatureStoreError, match="another `features build`"):
            build_feature_store(model, ["the cat"], tmp_path, SETTINGS, progress=False)
    finally:
        os.close(fd)
    assert isinstance(FeatureStoreError("x"), CircuitAtlasError)


def test_the_suggested_encoding_rerun_continues_the_stopped_build(model, helpers, tmp_path, dump):
    """The error says "pass --encoding-errors replace"; that rerun used to be refused as "built
    with other inputs or settings". It continues the store, which then equals a fresh replacing
    build, and records the switch; the opposite switch stays refused."""
    settings = BuildSettings(context_len=10, top_k=4, n_samples=6, block_documents=2)
    texts = helpers.word_texts(8, seed=5)
    texts[5] = b"the cat \xff said caf\xe9 two"
    corpus = _corpus(tmp_path / "c", texts)
    with pytest.raises(FeatureBuildError, match="--encoding-errors replace"):
        build_feature_store(model, corpus, tmp_path / "out", settings, commit_interval=0,
                            progress=False)
    with FeatureStore(tmp_path / "out") as partial:
        assert not partial.complete and partial.meta["progress"]["doc"] > 0
    replacing = open_feature_corpus(corpus, encoding_errors="replace")
    report = build_feature_store(model, replacing, tmp_path / "out", settings, progress=False)
    assert report.resumed and report.complete and report.documents == 8
    build_feature_store(model, replacing, tmp_path / "fresh", settings, progress=False)
    assert dump(tmp_path / "out") == dump(tmp_path / "fresh")
    with FeatureStore(tmp_path / "out") as store:
        assert store.meta["corpus"]["encoding_errors"] == "replace"

    with pytest.raises(FeatureStoreError, match=r"corpus.encoding_errors: stored 'replace', now 'strict'"):
        build_feature_store(model, corpus, tmp_path / "fresh", settings, progress=False)
