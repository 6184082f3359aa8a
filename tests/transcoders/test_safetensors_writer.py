"""write_safetensors: files the official library reads, written atomically."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from circuit_atlas.errors import TranscoderFormatError
from circuit_atlas.transcoders.safetensors_io import TensorSource, write_safetensors


def test_chunks_make_a_file_the_official_reader_reads(tmp_path):
    whole = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    source = TensorSource((4, 3), torch.float32, lambda: [whole[:1], whole[1:]])
    write_safetensors(tmp_path / "w.safetensors", {"W": source, "b": torch.ones(2)})
    back = load_file(str(tmp_path / "w.safetensors"))
    assert torch.equal(back["W"], whole) and torch.equal(back["b"], torch.ones(2))


def test_a_write_that_fails_midway_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "w.safetensors"
    write_safetensors(path, {"W": torch.zeros(4, 3)})
    before = path.read_bytes()

    def chunks():
        yield torch.ones(2, 3)
        raise OSError("disk full")  # half the tensor written, then the failure

    with pytest.raises(OSError, match="disk full"):
        write_safetensors(path, {"W": TensorSource((4, 3), torch.float32, chunks)})
    with pytest.raises(TranscoderFormatError, match="does not match its declared shape"):
        write_safetensors(path, {"W": TensorSource((4, 3), torch.float32, lambda: [torch.ones(4, 5)])})
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]
    assert path.read_bytes() == before
