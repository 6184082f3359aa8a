"""StoreBuilder's grouped arguments: a single process builds every layer's logits on one rank;
a shard's role decides its layers, rounds and commit hook."""

from __future__ import annotations

import dataclasses

import pytest

from circuit_atlas.features import BuildSettings
from circuit_atlas.features.builder import RoundStart, RunOptions, ShardRole, StoreBuilder
from circuit_atlas.features.open_store import identity, open_store
from circuit_atlas.io.corpus import TextListCorpus

SETTINGS = BuildSettings(context_len=10, top_k=4, n_samples=6)


@pytest.fixture
def store(helpers, tmp_path):
    model = helpers.make_model()
    corpus = TextListCorpus(helpers.word_texts(4))
    (tmp_path / "s").mkdir()
    conn, _ = open_store(tmp_path / "s", model, identity(model, corpus, SETTINGS))
    yield model, corpus, conn
    conn.close()


def test_a_single_process_builder_takes_every_layer_on_one_rank(store):
    model, corpus, conn = store
    builder = StoreBuilder(model, corpus, SETTINGS, conn, RunOptions(8, 0.5, False))
    assert (builder.batch_size, builder.commit_interval, builder.show_progress) == (8, 0.5, False)
    assert builder.logit_layers == list(range(model.transcoders.n_layers))
    assert (builder.ranks.rank, builder.ranks.world_size) == (0, 1)
    assert builder.start is None and builder.on_commit is None


def test_a_shard_role_is_what_the_builder_uses(store):
    model, corpus, conn = store
    start = RoundStart(round=2, tokens_before=17)

    def hook(connection, counts):
        return None

    role = ShardRole(logit_layers=(1,), start=start, on_commit=hook)
    builder = StoreBuilder(model, corpus, SETTINGS, conn, RunOptions(4, 1.0, True), role)
    assert builder.logit_layers == [1] and builder.start is start and builder.on_commit is hook
    with pytest.raises(dataclasses.FrozenInstanceError):
        role.start = None  # type: ignore[misc]
