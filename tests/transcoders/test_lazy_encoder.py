"""Lazy encoders: a set whose encoders stay on disk computes exactly what the eager set computes,
holds no encoder matrix in memory, and reports bad rows and unsafe saves by file and tensor.

Reference values come from the in-memory random set the files were written from (or from the
raw tensors the official `safetensors` writer stored), never from the lazy path itself.
"""

from __future__ import annotations

import gc

import pytest
import torch
from safetensors.torch import load_file, save_file

import circuit_atlas
from circuit_atlas.errors import TranscoderFormatError
from circuit_atlas.transcoders import load_transcoders
from circuit_atlas.transcoders.encoders import EagerEncoder, MappedEncoder
from circuit_atlas.transcoders.random import random_transcoders

L, D, F = 2, 32, 48
HOOKS = {"plt": ("mlp.hook_in", "mlp.hook_out"), "clt": ("hook_resid_mid", "hook_mlp_out")}
# name -> (kind, activation, skip, writer)
SETS = {
    "native-plt": ("plt", "relu", True, "save_native"),
    "native-clt": ("clt", "jumprelu", False, "save_native"),
    "ct-plt": ("plt", "jumprelu", True, "save_circuit_tracer"),
    "ct-clt": ("clt", "relu", False, "save_circuit_tracer"),
}


def make_source(name: str, seed: int = 5):
    kind, activation, skip, _ = SETS[name]
    hook_in, hook_out = HOOKS[kind]
    return random_transcoders(kind, n_layers=L, d_model=D, n_features=F, activation=activation,
                              skip=skip, seed=seed, input_hook=hook_in, output_hook=hook_out)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Each set of SETS written once by our own writer: name -> (directory, in-memory source)."""
    out = {}
    for name, (*_, writer) in SETS.items():
        source = make_source(name)
        directory = tmp_path_factory.mktemp(name)
        getattr(source, writer)(directory)
        out[name] = (directory, source)
    return out


def encoder_tensors(tc) -> list[torch.Tensor]:
    """Every torch tensor an encoder store holds as an attribute (its resident state)."""
    found = []
    for layer in range(tc.n_layers):
        store = tc.encoder_store(layer)
        found += [v for v in vars(store).values() if isinstance(v, torch.Tensor)]
        file = getattr(store, "file", None)
        if file is not None:
            found += [v for v in vars(file).values() if isinstance(v, torch.Tensor)]
    return found


def live_tensors_of_shape(shape: tuple[int, ...]) -> int:
    gc.collect()
    # type(), not isinstance(): isinstance reads `__class__`, which some lazy module proxies warn on
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor) and tuple(o.shape) == shape)


@pytest.mark.parametrize("name", list(SETS))
def test_lazy_encoder_matches_eager_and_source(written, name):
    directory, source = written[name]
    eager = load_transcoders(directory)
    lazy = load_transcoders(directory, lazy_encoder=True)
    assert lazy.lazy_encoder and not eager.lazy_encoder
    assert all(isinstance(lazy.encoder_store(i), MappedEncoder) for i in range(L))
    assert all(isinstance(eager.encoder_store(i), EagerEncoder) for i in range(L))
    assert "lazy_encoder=True" in repr(lazy) and "lazy_encoder=False" in repr(eager)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, D, generator=gen)
    idx = torch.randint(0, F, (30,), generator=gen)  # unsorted, with repeats
    for layer in range(L):
        want_w = source.encoder_weight(layer)
        pre = lazy.pre_activation(layer, x)
        assert torch.equal(pre, eager.pre_activation(layer, x))  # bitwise, fp32
        independent = x @ want_w.T + source.encoder_bias(layer)
        assert torch.allclose(pre, independent, atol=1e-5)
        assert torch.equal(lazy.encode(layer, x), eager.encode(layer, x))
        assert torch.equal(lazy.encoder_rows(layer, idx), want_w[idx])
        assert torch.equal(lazy.encoder_rows(layer, idx), eager.encoder_rows(layer, idx))
        assert torch.equal(lazy.encoder_weight(layer), want_w)
    assert lazy.encoder_rows(1, torch.tensor([], dtype=torch.long)).shape == (0, D)


@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_gemmascope2_lazy_encoder_reads_transposed_files(make_gemmascope2, kind):
    """GemmaScope-2 stores w_enc as [d, F] (written here by the official writer): lazy rows are
    columns of the file's tensor."""
    root, raw = make_gemmascope2(kind, L=3, d=5, F=8)
    eager = load_transcoders(str(root))
    lazy = load_transcoders(str(root), lazy_encoder=True)
    assert lazy.lazy_encoder
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(2))
    idx = torch.tensor([7, 0, 3, 3, 5])
    for layer in range(3):
        w_enc = raw.files[layer]["w_enc"]  # [d, F]
        assert torch.equal(lazy.encoder_rows(layer, idx), w_enc.T[idx])
        assert torch.equal(lazy.encoder_weight(layer), w_enc.T)
        assert torch.equal(lazy.pre_activation(layer, x), eager.pre_activation(layer, x))
        assert torch.equal(lazy.encode(layer, x), eager.encode(layer, x))


@pytest.mark.parametrize("name", list(SETS))
def test_attribution_graph_identical_with_lazy_encoders(written, name):
    from circuit_atlas.models.tiny import tiny_language_model

    directory, _ = written[name]
    lm = tiny_language_model("llama", seed=3, n_layers=L, d_model=D)
    eager = circuit_atlas.load(lm, str(directory))
    lazy = circuit_atlas.load(lm, str(directory), lazy_encoder=True)
    assert lazy.transcoders.lazy_encoder and not eager.transcoders.lazy_encoder
    ids = torch.randint(4, lm.vocab_size, (6,), generator=torch.Generator().manual_seed(0))
    ids[0] = eager.tokenizer.bos_token_id
    a = circuit_atlas.attribute(eager, ids, max_feature_nodes=40, batch_size=16, progress=False)
    b = circuit_atlas.attribute(lazy, ids, max_feature_nodes=40, batch_size=16, progress=False)
    assert a.adjacency.abs().sum() > 0 and a.selected_features.numel() > 0
    for field in ("active_features", "activation_values", "selected_features", "logit_token_ids",
                  "adjacency"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


def test_lazy_set_holds_no_encoder_matrix(written):
    directory, _ = written["native-clt"]
    eager = load_transcoders(directory, lazy_decoder=True)
    lazy = load_transcoders(directory, lazy_encoder=True)
    x = torch.randn(7, D, generator=torch.Generator().manual_seed(3))
    for layer in range(L):  # exercise every read path first
        lazy.encode(layer, x)
        lazy.encoder_rows(layer, [1, 5])
    # Accounting: every eager store holds its [F, d] matrix, lazy ones hold nothing.
    assert sum(eager.encoder_store(i).resident_bytes for i in range(L)) == L * F * D * 4
    assert sum(lazy.encoder_store(i).resident_bytes for i in range(L)) == 0
    assert [tuple(t.shape) for t in encoder_tensors(eager)] == [(F, D)] * L
    assert encoder_tensors(lazy) == []
    # Independently of our accounting: live [F, d] tensors in the whole process.
    del eager
    baseline = live_tensors_of_shape((F, D))
    eager = load_transcoders(directory)
    assert live_tensors_of_shape((F, D)) == baseline + L  # positive control: the probe sees them
    del eager
    assert live_tensors_of_shape((F, D)) == baseline
    lazy.pre_activation(0, x)
    assert live_tensors_of_shape((F, D)) == baseline  # read for one use, then released


def test_lazy_encoder_weight_is_a_fresh_copy(written):
    directory, source = written["ct-plt"]
    lazy = load_transcoders(directory, lazy_encoder=True)
    weight = lazy.encoder_weight(1)
    weight.zero_()  # editing the copy must not change the set
    assert torch.equal(lazy.encoder_weight(1), source.encoder_weight(1))
    assert torch.equal(lazy.encoder_rows(1, [2]), source.encoder_weight(1)[[2]])


def _corrupt(path, key, row, column=0):
    tensors = load_file(str(path))
    tensors[key] = tensors[key].clone()
    tensors[key][row, column] = float("nan")
    save_file(tensors, str(path))


def test_nan_encoder_row_reported_by_file_and_tensor(written, tmp_path):
    _, source = written["native-plt"]
    source.save_native(tmp_path)
    _corrupt(tmp_path / "encoder_1.safetensors", "W_enc", row=5)
    lazy = load_transcoders(tmp_path, lazy_encoder=True)  # lazy: not scanned at load
    assert torch.isfinite(lazy.encoder_rows(1, [0, 4, 6])).all()
    assert torch.isfinite(lazy.pre_activation(0, torch.ones(D))).all()
    message = r"encoder_1\.safetensors: tensor 'W_enc'.*feature 5 holds NaN"
    with pytest.raises(TranscoderFormatError, match=message):
        lazy.encoder_rows(1, [3, 5])
    with pytest.raises(TranscoderFormatError, match=message):
        lazy.pre_activation(1, torch.ones(D))
    with pytest.raises(TranscoderFormatError, match=message):
        lazy.check_finite()
    with pytest.raises(TranscoderFormatError, match=r"encoder_1\.safetensors: tensor 'W_enc' holds NaN"):
        load_transcoders(tmp_path)


def test_values_that_overflow_the_requested_dtype_are_refused_lazily_too(written, tmp_path):
    """1e6 is finite in the float32 file but inf in float16: the eager load refuses it, so the
    lazy reads must too (they check after the cast)."""
    _, source = written["native-plt"]
    source.save_native(tmp_path)
    tensors = load_file(str(tmp_path / "encoder_1.safetensors"))
    tensors["W_enc"] = tensors["W_enc"].clone()
    tensors["W_enc"][5, 0] = 1e6
    save_file(tensors, str(tmp_path / "encoder_1.safetensors"))
    with pytest.raises(TranscoderFormatError):
        load_transcoders(tmp_path, dtype=torch.float16)
    lazy = load_transcoders(tmp_path, dtype=torch.float16, lazy_encoder=True)
    with pytest.raises(TranscoderFormatError, match="feature 5"):
        lazy.encoder_rows(1, [5])
    with pytest.raises(TranscoderFormatError, match="feature 5"):
        lazy.pre_activation(1, torch.ones(D, dtype=torch.float16))


def test_nan_in_transposed_gemmascope2_encoder_names_the_feature(make_gemmascope2):
    root, _ = make_gemmascope2("plt", L=2, d=5, F=8, skip=False)
    _corrupt(root / "params_layer_0.safetensors", "w_enc", row=2, column=6)  # [d, F]: feature 6
    lazy = load_transcoders(str(root), lazy_encoder=True)
    with pytest.raises(TranscoderFormatError, match=r"params_layer_0\.safetensors: tensor 'w_enc'.*feature 6"):
        lazy.encoder_rows(0, [6])
    assert torch.isfinite(lazy.encoder_rows(0, [0, 5, 7])).all()


@pytest.mark.parametrize("name", ["native-plt", "ct-clt"])
def test_saving_lazy_encoder_set_into_its_source_is_refused(written, tmp_path, name):
    directory, source = written[name]
    lazy = load_transcoders(directory, lazy_encoder=True, lazy_decoder=False)
    assert not lazy.lazy_decoder  # only the encoders keep it tied to its files
    save = getattr(lazy, SETS[name][3])
    with pytest.raises(TranscoderFormatError, match="reads its weights lazily from"):
        save(directory)
    assert torch.equal(load_transcoders(directory).encoder_weight(0), source.encoder_weight(0))
    save(tmp_path / "copy")  # elsewhere is fine, and streams the encoder from disk
    back = load_transcoders(tmp_path / "copy")
    for layer in range(L):
        assert torch.equal(back.encoder_weight(layer), source.encoder_weight(layer))


def test_to_bfloat16_stays_lazy(written):
    directory, source = written["native-clt"]
    lazy = load_transcoders(directory, lazy_encoder=True).to(dtype=torch.bfloat16)
    eager = load_transcoders(directory).to(dtype=torch.bfloat16)
    assert lazy.dtype == torch.bfloat16 and lazy.lazy_encoder
    assert encoder_tensors(lazy) == []
    x = torch.randn(4, D, generator=torch.Generator().manual_seed(4))
    for layer in range(L):
        rows = lazy.encoder_rows(layer, [9, 2])
        assert rows.dtype == torch.bfloat16
        assert torch.equal(rows, source.encoder_weight(layer)[[9, 2]].to(torch.bfloat16))
        pre = lazy.pre_activation(layer, x)
        assert pre.dtype == torch.bfloat16
        assert torch.equal(pre, eager.pre_activation(layer, x))


def test_npz_sets_ignore_lazy_encoder(make_gemmascope_npz):
    root, raw = make_gemmascope_npz()
    tc = load_transcoders(str(root), lazy_encoder=True)
    assert not tc.lazy_encoder
    assert torch.equal(tc.encoder_rows(1, [3]), torch.from_numpy(raw.layers[1]["W_enc"]).float().T[[3]])


@pytest.mark.parametrize("argv", [
    ["trace", "--model", "m", "--transcoders", "t", "--prompt", "p", "--out", "o"],
    ["steer", "--model", "m", "--transcoders", "t", "--prompt", "p"],
    ["features", "build", "--model", "m", "--transcoders", "t", "--corpus", "c", "--out", "o"],
    ["serve", "."],
])
def test_cli_lazy_encoder_flag(argv):
    from circuit_atlas.cli.main import build_parser

    parser = build_parser()
    assert parser.parse_known_args(argv)[0].lazy_encoder is False
    assert parser.parse_known_args([*argv, "--lazy-encoder"])[0].lazy_encoder is True


def test_serve_passes_lazy_encoder_to_load(monkeypatch):
    from circuit_atlas.cli import serve

    seen = {}
    monkeypatch.setattr("circuit_atlas.replacement.load", lambda *a, **kw: seen.update(kw) or "model")
    assert serve.load_steering_model("m", "t", "cpu", None, True) == "model"
    assert seen["lazy_encoder"] is True


@pytest.mark.parametrize("name", list(SETS))
def test_encode_entries_reads_rows_and_equals_full_encoding(written, name, monkeypatch):
    """Interventions read a few activations per layer: for lazy ReLU / JumpReLU sets that must
    not read the whole encoder, and must equal the full `encode` at those entries."""
    directory, source = written[name]
    lazy = load_transcoders(directory, lazy_encoder=True)
    x = torch.randn(7, D, generator=torch.Generator().manual_seed(3))
    positions, features = torch.tensor([0, 3, 3, 6]), torch.tensor([5, 1, 40, 5])
    for layer in range(L):
        expected = source.encode(layer, x)[positions, features]
        torch.testing.assert_close(source.encode_entries(layer, x, positions, features), expected,
                                   rtol=0, atol=0)  # eager: the full encode itself
        monkeypatch.setattr(MappedEncoder, "weight", lambda self: pytest.fail("read a whole layer"))
        torch.testing.assert_close(lazy.encode_entries(layer, x, positions, features), expected)
        monkeypatch.undo()
    assert bool((source.encode(0, x)[positions, features] > 0).any())  # not all inactive


def test_saving_into_a_folder_of_symlinked_weights_is_refused(written, tmp_path):
    """A hub snapshot folder holds symlinks into blobs/: writing there would replace the files the
    lazy set reads, so it is refused like writing into the blobs folder itself."""
    directory, _ = written["native-plt"]
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    for file in directory.iterdir():
        (snapshot / file.name).symlink_to(file)
    lazy = load_transcoders(snapshot, lazy_encoder=True)
    with pytest.raises(TranscoderFormatError, match="reads its weights lazily"):
        lazy.save_native(snapshot)
    assert all(p.is_symlink() for p in snapshot.iterdir())
