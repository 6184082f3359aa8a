"""The safetensors activation cache: complete coverage per epoch, resume, rank slicing, errors."""

import pytest
import torch

from circuit_atlas.training.cache import CachedActivationSource, build_activation_cache
from circuit_atlas.training.errors import TrainingDataError
from circuit_atlas.training.source import TensorActivationSource

N, L, D = 100, 2, 3


@pytest.fixture
def cache_dir(tmp_path):
    ids = torch.arange(N, dtype=torch.float32)
    x = ids[:, None, None].expand(N, L, D).clone()  # row i is all i: identifies the token
    y = -x
    build_activation_cache(TensorActivationSource(x, y, seed=0), tmp_path / "cache", n_tokens=N,
                           shard_tokens=30, dtype=torch.float32, metadata={"model": "m"},
                           progress=False)
    return tmp_path / "cache"


def test_layout_and_one_epoch_serves_every_token_once(cache_dir):
    assert sorted(p.name for p in cache_dir.iterdir()) == [
        "cache.json", "shard_00000.safetensors", "shard_00001.safetensors",
        "shard_00002.safetensors", "shard_00003.safetensors"]
    src = CachedActivationSource(cache_dir, seed=3)
    x, y = src.next_batch(N)
    assert sorted(x[:, 0, 0].tolist()) == list(range(N))
    assert torch.equal(y, -x) and x.dtype == torch.float32
    again, _ = src.next_batch(N)  # second epoch: same tokens, another order
    assert sorted(again[:, 0, 0].tolist()) == list(range(N))
    assert not torch.equal(again, x)


def test_resume_continues_the_same_order(cache_dir):
    a = CachedActivationSource(cache_dir, seed=1)
    for _ in range(3):
        a.next_batch(17)
    state = a.state_dict()
    expected = [a.next_batch(17)[0] for _ in range(6)]
    b = CachedActivationSource(cache_dir, seed=1)
    b.load_state_dict(state)
    for want in expected:
        assert torch.equal(b.next_batch(17)[0], want)


def test_two_ranks_split_each_global_batch(cache_dir):
    single = CachedActivationSource(cache_dir, seed=2)
    ranks = [CachedActivationSource(cache_dir, seed=2, rank=r, world_size=2) for r in range(2)]
    for _ in range(4):
        whole = single.next_batch(20)[0]
        parts = [src.next_batch(10)[0] for src in ranks]
        assert torch.equal(torch.cat(parts), whole)


def test_errors(cache_dir, tmp_path):
    with pytest.raises(TrainingDataError, match="fewer than one batch"):
        CachedActivationSource(cache_dir).next_batch(N + 1)
    (cache_dir / "shard_00002.safetensors").unlink()
    with pytest.raises(TrainingDataError, match="shard_00002.safetensors is missing"):
        CachedActivationSource(cache_dir)
    with pytest.raises(TrainingDataError, match="not a complete activation cache"):
        CachedActivationSource(tmp_path)
