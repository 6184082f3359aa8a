"""The shipped demo transcoders: `demo` references resolve, and the sets reconstruct the model's MLPs.

The FVU here is computed by hand from the safetensors files (JumpReLU encoder, decoders summed
over source layers, as the native format's docstring states) on fresh toy-world lines, and the
MLP pairs come from plain transformers hooks: nothing of our transcoder or activation code runs.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import circuit_atlas
from circuit_atlas.demo import bundle, toyworld

LINES_SEED = 4242  # none of the build's corpus seeds


@pytest.fixture(scope="module")
def pairs():
    """(x, y) [N, L, d] at every non-BOS position of 150 fresh lines, via HF hooks."""
    torch.set_num_threads(1)
    hf, tok = bundle.load_demo_hf()
    lines = toyworld.generate_corpus(bundle.demo_world(), 150, seed=LINES_SEED)
    xs, ys = [], []
    for line in lines:
        ids = tok(line)["input_ids"]
        got_x, got_y, handles = {}, {}, []
        for i, layer in enumerate(hf.model.layers):
            handles.append(layer.post_attention_layernorm.register_forward_hook(
                lambda m, inp, out, i=i: got_x.__setitem__(i, inp[0][0, 1:])))
            handles.append(layer.mlp.register_forward_hook(
                lambda m, inp, out, i=i: got_y.__setitem__(i, out[0, 1:])))
        with torch.no_grad():
            hf(input_ids=torch.tensor([ids]))
        for h in handles:
            h.remove()
        xs.append(torch.stack([got_x[i] for i in range(4)], 1))
        ys.append(torch.stack([got_y[i] for i in range(4)], 1))
    return torch.cat(xs), torch.cat(ys)


def _hand_reconstruction(folder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ŷ [N, L, d], L0 [L]) from the files alone."""
    config = json.loads((folder / "circuit_atlas_transcoders.json").read_text())
    n_layers, clt = config["n_layers"], config["kind"] == "clt"
    enc = [load_file(str(folder / f"encoder_{l}.safetensors")) for l in range(n_layers)]
    dec = [load_file(str(folder / f"decoder_{l}.safetensors"))["W_dec"] for l in range(n_layers)]
    acts = []
    for l in range(n_layers):
        h = x[:, l] @ enc[l]["W_enc"].T + enc[l]["b_enc"]
        acts.append(h * (h > enc[l]["threshold"]))
    recon = torch.zeros_like(x)
    for target in range(n_layers):
        recon[:, target] = enc[target]["b_dec"]
        for source in (range(target + 1) if clt else [target]):
            recon[:, target] += acts[source] @ dec[source][:, target - source if clt else 0]
    l0 = torch.stack([(a > 0).float().sum(-1).mean() for a in acts])
    return recon, l0


@pytest.mark.parametrize("kind", ["clt", "plt"])
def test_shipped_sets_reconstruct_the_mlps(pairs, kind):
    x, y = pairs
    recon, l0 = _hand_reconstruction(bundle.demo_transcoders_path(kind), x)
    centred = y - y.mean(0, keepdim=True)
    fvu = ((recon - y) ** 2).sum((0, 2)) / (centred ** 2).sum((0, 2))
    assert (fvu < 0.1).all(), f"{kind} FVU per layer {fvu.tolist()}"
    assert ((l0 > 2) & (l0 < 64)).all(), f"{kind} L0 per layer {l0.tolist()}"
    # the report's held-out figure (other lines) agrees with this measurement
    reported = bundle.transcoders_report()["sets"][kind]["held_out"]
    assert reported["mean_fvu"] == pytest.approx(float(fvu.mean()), abs=0.02)


def test_demo_references_resolve_to_the_bundled_sets():
    assert bundle.resolve_transcoders_ref("demo") == str(bundle.demo_transcoders_path("clt"))
    assert bundle.resolve_transcoders_ref("demo-clt") == str(bundle.demo_transcoders_path("clt"))
    assert bundle.resolve_transcoders_ref("demo-plt") == str(bundle.demo_transcoders_path("plt"))
    assert bundle.resolve_transcoders_ref("mntss/clt-llama") == "mntss/clt-llama"


def test_load_demo_pairs_model_and_transcoders():
    model = circuit_atlas.load("demo", "demo-plt")
    assert model.transcoders.kind == "plt" and model.n_layers == 4
    item = bundle.default_two_hop_item()
    run = model.run(model.tokenize(item.prompt))
    # the replacement model's clean pass is the real model: it still answers austin
    assert model.lm.token_strings([int(run.logits[-1].argmax())])[0].strip() == item.answer


def test_assets_stay_within_the_size_budget():
    total = sum(p.stat().st_size for p in bundle.ASSETS_DIR.rglob("*") if p.is_file())
    assert total <= 40 * 2**20, f"assets hold {total / 2**20:.1f} MiB"
