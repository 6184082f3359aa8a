"""Lazy decoders: rows read through the memory map equal eager rows; bad rows found on read."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from circuit_atlas.errors import TranscoderFormatError
from circuit_atlas.transcoders import load_transcoders
from circuit_atlas.transcoders.decoders import MappedDecoder


def test_lazy_rows_equal_eager_rows(make_ct_clt):
    root, raw = make_ct_clt(L=4, d=16, F=3000)
    lazy = load_transcoders(str(root))
    eager = load_transcoders(str(root), lazy_decoder=False)
    assert all(isinstance(lazy.decoder_store(i), MappedDecoder) for i in range(4))
    assert not eager.lazy_decoder
    idx = torch.randint(0, 3000, (500,), generator=torch.Generator().manual_seed(0))  # unsorted, repeats
    for source in range(4):
        for target in lazy.target_layers(source):
            rows = lazy.decoder_rows(source, idx, target)
            assert torch.equal(rows, eager.decoder_rows(source, idx, target))
            assert torch.equal(rows, raw.dec[source][idx, target - source])
        assert torch.equal(lazy.decoder_rows_all(source, idx), raw.dec[source][idx])
    assert lazy.decoder_rows(0, torch.tensor([], dtype=torch.long), 1).shape == (0, 16)


def test_rows_into_a_buffer_equal_rows(make_ct_clt):
    """`decoder_rows_into` (the compact engine's reused buffers) writes exactly `decoder_rows`,
    for in-memory CLT decoders (strided target slices) and mapped ones, and for out-of-range
    features raises like `decoder_rows`."""
    root, _raw = make_ct_clt(L=3, d=16, F=500)
    idx = torch.randint(0, 500, (64,), generator=torch.Generator().manual_seed(1))
    for tc in (load_transcoders(str(root)), load_transcoders(str(root), lazy_decoder=False)):
        buffer = torch.full((64, 16), float("nan"))
        for source in range(3):
            for target in tc.target_layers(source):
                out = tc.decoder_rows_into(source, idx, target, buffer)
                assert out.data_ptr() == buffer.data_ptr()
                assert torch.equal(out, tc.decoder_rows(source, idx, target))
        with pytest.raises(Exception, match="out of range"):
            tc.decoder_rows_into(0, torch.tensor([500]), 0, buffer[:1])


def test_lazy_rows_follow_dtype(make_ct_plt):
    root, raw = make_ct_plt(dtype=torch.bfloat16)
    tc = load_transcoders(str(root), dtype=torch.float16)
    rows = tc.decoder_rows(1, [2, 9], 1)
    assert rows.dtype == torch.float16
    assert torch.equal(rows, raw.layers[1]["W_dec"][[2, 9]].to(torch.float16))


def test_nan_in_lazy_decoder_is_reported_on_read(make_ct_plt):
    root, raw = make_ct_plt()
    layer = dict(raw.layers[1])
    layer["W_dec"] = layer["W_dec"].clone()
    layer["W_dec"][7, 2] = float("nan")
    save_file(layer, str(root / "layer_1.safetensors"))
    tc = load_transcoders(str(root))  # lazy: decoders are not scanned at load
    assert torch.isfinite(tc.decoder_rows(1, [0, 6, 8], 1)).all()
    with pytest.raises(TranscoderFormatError, match="layer_1.safetensors: tensor 'W_dec'.*feature 7"):
        tc.decoder_rows(1, [3, 7], 1)
    with pytest.raises(TranscoderFormatError, match="layer_1.safetensors"):
        tc.check_finite()
    with pytest.raises(TranscoderFormatError, match="layer_1.safetensors: tensor 'W_dec' holds NaN"):
        load_transcoders(str(root), lazy_decoder=False)
