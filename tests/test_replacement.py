"""ReplacementModel: clean run, local replacement model, and the frozen autograd pass.

Transcoders here are a small stand-in written against the contract in docs/architecture.md
(so these tests do not depend on the transcoders part), with ReLU features, an optional PLT skip
and CLT decoders for every later layer. Expected values are computed by hand from its weights.
"""

from __future__ import annotations

import pytest
import torch

import circuit_atlas
from circuit_atlas.errors import ShapeMismatchError, UnsupportedArchitectureError
from circuit_atlas.models import FreezeSpec
from circuit_atlas.models.tiny import tiny_language_model
from circuit_atlas.replacement import ReplacementModel

PROMPT = "the capital of Texas is Austin and the capital of France is Paris"


class StandInTranscoders:
    """Minimal PLT / CLT with the contract's methods; dense ReLU, decoders `[F, T, d]`."""

    def __init__(self, kind, n_layers, d_model, n_features, input_hook, output_hook, *, skip=False, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.kind, self.n_layers, self.d_model, self.n_features = kind, n_layers, d_model, n_features
        self.input_hook, self.output_hook, self.scan = input_hook, output_hook, f"stand-in-{kind}"
        self.W_enc = torch.randn(n_layers, n_features, d_model, generator=g) / d_model**0.5
        self.b_enc = torch.randn(n_layers, n_features, generator=g) * 0.3
        self.W_dec = [
            torch.randn(n_features, len(self.target_layers(l)), d_model, generator=g) * 0.1
            for l in range(n_layers)
        ]
        self.b_dec = torch.randn(n_layers, d_model, generator=g) * 0.1
        self.W_skip = torch.randn(n_layers, d_model, d_model, generator=g) * 0.1 if skip else None

    def target_layers(self, source_layer):
        return range(source_layer, source_layer + 1 if self.kind == "plt" else self.n_layers)

    def to(self, device=None, dtype=None):
        """Move every weight (so the tests also run with CIRCUIT_ATLAS_TEST_DEVICE=cuda)."""
        def move(t):
            return None if t is None else t.to(device=device, dtype=dtype)

        self.W_enc, self.b_enc, self.b_dec = move(self.W_enc), move(self.b_enc), move(self.b_dec)
        self.W_dec, self.W_skip = [move(w) for w in self.W_dec], move(self.W_skip)
        return self

    def pre_activation(self, layer, x):
        return x @ self.W_enc[layer].T + self.b_enc[layer]

    def activate(self, layer, h):
        return torch.relu(h)

    def encode(self, layer, x):
        return self.activate(layer, self.pre_activation(layer, x))

    def encoder_rows(self, layer, features):
        return self.W_enc[layer][features]

    def decoder_rows(self, source_layer, features, target_layer):
        return self.W_dec[source_layer][features, target_layer - source_layer]

    def skip(self, layer, x):
        return None if self.W_skip is None else x @ self.W_skip[layer].T

    def reconstruct(self, layer, acts_by_source, x_in):
        out = self.b_dec[layer].expand(x_in.shape[0], -1).clone()
        for source, acts in acts_by_source.items():
            if layer in self.target_layers(source):
                out = out + acts @ self.W_dec[source][:, layer - source]
        if self.W_skip is not None:
            out = out + self.skip(layer, x_in)
        return out


CASES = {
    # family, kind, input hook, output hook, skip
    "llama-plt-skip": ("llama", "plt", "mlp.hook_in", "mlp.hook_out", True),
    "gemma2-clt": ("gemma2", "clt", "hook_resid_mid", "hook_mlp_out", False),
    "gpt2-plt-normalized": ("gpt2", "plt", "ln2.hook_normalized", "hook_mlp_out", True),
    "qwen3-clt": ("qwen3", "clt", "mlp.hook_in", "hook_mlp_out", False),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    torch.set_num_threads(1)
    family, kind, hook_in, hook_out, skip = CASES[request.param]
    lm = tiny_language_model(family, seed=2, n_layers=3)
    tc = StandInTranscoders(kind, lm.n_layers, lm.d_model, 48, hook_in, hook_out, skip=skip, seed=5)
    rm = circuit_atlas.load(lm, tc)
    tokens = rm.tokenize(PROMPT)
    return rm, tc, tokens, rm.run(tokens)


def test_run_matches_hand_computation(case):
    rm, tc, tokens, run = case
    L, P, d = rm.n_layers, tokens.numel(), rm.d_model
    with torch.no_grad():
        expected_logits = rm.lm.hf_model(input_ids=tokens[None]).logits[0]
        hooks = rm.lm.forward(tokens, record_hooks=[tc.input_hook, tc.output_hook]).hooks
    assert (run.logits - expected_logits).abs().max() <= 1e-4
    x = torch.stack([h[0] for h in hooks[tc.input_hook]])
    y = torch.stack([h[0] for h in hooks[tc.output_hook]])
    assert torch.allclose(run.mlp_inputs, x) and torch.allclose(run.mlp_outputs, y)

    acts = torch.relu(torch.einsum("lpd,lfd->lpf", x, tc.W_enc) + tc.b_enc[:, None])
    acts[:, 0] = 0
    assert run.activations.is_sparse and run.activations.is_coalesced()
    assert run.activations.shape == (L, P, tc.n_features)
    assert (run.activations.indices()[1] > 0).all()  # nothing at the zeroed position
    assert torch.allclose(run.activations.to_dense(), acts, atol=1e-6)

    recon = tc.b_dec[:, None].expand(L, P, d).clone()
    for target in range(L):
        for source in range(target + 1):
            if target in tc.target_layers(source):
                recon[target] += acts[source] @ tc.W_dec[source][:, target - source]
        if tc.W_skip is not None:
            recon[target] += x[target] @ tc.W_skip[target].T
    assert torch.allclose(run.reconstruction, recon, atol=1e-5)
    errors = y - recon
    errors[:, 0] = 0
    assert torch.allclose(run.errors, errors, atol=1e-5)
    assert run.errors[:, 0].abs().max() == 0 and run.errors[:, 1:].abs().max() > 1e-3

    embed = rm.lm.hf_model.get_input_embeddings()
    scale = rm.d_model**0.5 if rm.lm.family.startswith("gemma") else 1.0
    assert torch.allclose(run.token_vectors, embed.weight[tokens] * scale, atol=1e-6)


def test_frozen_replacement_reproduces_logits(case):
    rm, tc, tokens, run = case
    logits = rm.frozen_replacement_logits(run)
    assert (logits - run.logits).abs().max().item() <= 1e-4
    without_errors = rm.frozen_replacement_logits(run, with_errors=False)
    assert (without_errors - run.logits).abs().max().item() > 1e-3


def test_frozen_forward_values_and_graph(case):
    rm, tc, tokens, run = case
    frozen = rm.frozen_forward(tokens, batch_size=3, run=run)
    assert frozen.embeddings.requires_grad and frozen.embeddings.is_leaf
    assert frozen.embeddings.shape == (3, tokens.numel(), rm.d_model)
    for layer in range(rm.n_layers):
        assert torch.allclose(frozen.inputs[layer], run.mlp_inputs[layer].expand(3, -1, -1), atol=1e-5)
        assert torch.allclose(frozen.outputs[layer], run.mlp_outputs[layer].expand(3, -1, -1), atol=1e-5)
        assert frozen.outputs[layer].requires_grad
    assert torch.allclose(frozen.final_hidden[1], run.final_hidden, atol=1e-5)


def _replay(rm, tc, run, *, emb_delta=None, out_delta=None):
    """The local replacement model as a plain function: patterns and norm scales replayed, MLP
    outputs fixed at their clean values except the (linear) skip term, plus optional deltas."""

    def emb_edit(emb):
        return emb if emb_delta is None else emb + emb_delta

    def out_edit(layer, x, y):
        value = run.mlp_outputs[layer][None].clone()
        if tc.W_skip is not None:
            value = value + tc.skip(layer, x) - tc.skip(layer, run.mlp_inputs[layer][None])
        if out_delta is not None and out_delta[0] == layer:
            value = value + out_delta[1]
        return value

    with torch.no_grad():
        return rm.lm.forward(
            run.tokens, input_hook=tc.input_hook, output_hook=tc.output_hook,
            freeze=FreezeSpec.replayed(run.record), embedding_edit=emb_edit, output_edit=out_edit,
            compute_logits=False,
        )


def test_gradients_equal_effects_in_replayed_model(case):
    """Autograd through frozen_forward = exact change of the replayed frozen (affine) model."""
    rm, tc, tokens, run = case
    gen = torch.Generator().manual_seed(1)
    L, P, d = rm.n_layers, tokens.numel(), rm.d_model
    frozen = rm.frozen_forward(tokens, batch_size=2, run=run)
    device = run.errors.device
    v_feat = torch.randn(d, generator=gen).to(device)
    v_logit = torch.randn(d, generator=gen).to(device)
    target_pos = P - 2
    # batch element 0: an encoder-style target at the last layer's input hook; element 1: a logit
    phi = (frozen.inputs[L - 1][0, target_pos] * v_feat).sum() + (frozen.final_hidden[1, P - 1] * v_logit).sum()
    grads = torch.autograd.grad(phi, frozen.outputs + [frozen.embeddings], allow_unused=True)

    base = _replay(rm, tc, run)

    def phis(record):
        return ((record.inputs[L - 1][0, target_pos] * v_feat).sum(), (record.final_hidden[0, P - 1] * v_logit).sum())

    base_phi = phis(base)
    checks = [("embeddings", None, torch.randn(1, P, d, generator=gen).to(device))]
    checks += [(f"output {l}", l, torch.randn(1, P, d, generator=gen).to(device)) for l in range(L - 1)]
    for name, layer, delta in checks:
        if layer is None:
            moved = _replay(rm, tc, run, emb_delta=delta)
            grad = grads[-1]
        else:
            moved = _replay(rm, tc, run, out_delta=(layer, delta))
            grad = grads[layer]
        for b, (after, before) in enumerate(zip(phis(moved), base_phi)):
            effect = (after - before).item()
            predicted = (grad[b] * delta[0]).sum().item()
            assert abs(effect - predicted) <= 1e-4 * max(1.0, abs(effect)), (name, b, effect, predicted)

    # the same check against the live model fails: the freezing is what makes it exact
    with torch.no_grad():
        delta = checks[0][2]
        live = rm.lm.forward(tokens, input_hook=tc.input_hook, output_hook=tc.output_hook,
                             embedding_edit=lambda e: e + delta, compute_logits=False)
        live_effect = (live.final_hidden[0, P - 1] * v_logit).sum() - base_phi[1]
    assert abs(live_effect.item() - (grads[-1][1] * delta[0]).sum().item()) > 1e-3


def test_pairing_is_validated():
    lm = tiny_language_model("llama", n_layers=2)
    with pytest.raises(ShapeMismatchError, match=r"n_layers=3.*n_layers=2"):
        ReplacementModel(lm, StandInTranscoders("plt", 3, lm.d_model, 8, "mlp.hook_in", "mlp.hook_out"))
    with pytest.raises(ShapeMismatchError, match=r"d_model=32.*d_model=64"):
        circuit_atlas.load(lm, StandInTranscoders("plt", 2, 32, 8, "mlp.hook_in", "mlp.hook_out"))
    with pytest.raises(UnsupportedArchitectureError, match="hook_attn_out"):
        ReplacementModel(lm, StandInTranscoders("plt", 2, lm.d_model, 8, "hook_attn_out", "mlp.hook_out"))


def test_with_project_transcoders_if_available():
    """Same clean-run identities with the real `Transcoders` class, when that part is present."""
    core = pytest.importorskip("circuit_atlas.transcoders.core")
    lm = tiny_language_model("gemma3", seed=4)
    g = torch.Generator().manual_seed(0)
    F, d, L = 32, lm.d_model, lm.n_layers
    tc = core.Transcoders(
        "clt",
        W_enc=[torch.randn(F, d, generator=g) / d**0.5 for _ in range(L)],
        b_enc=[torch.randn(F, generator=g) * 0.2 for _ in range(L)],
        b_dec=[torch.randn(d, generator=g) * 0.1 for _ in range(L)],
        W_dec=[torch.randn(F, L - l, d, generator=g) * 0.1 for l in range(L)],
        input_hook="hook_resid_mid",
        output_hook="hook_mlp_out",
    )
    rm = circuit_atlas.load(lm, tc)
    run = rm.run(rm.tokenize(PROMPT))
    assert torch.allclose((run.reconstruction + run.errors)[:, 1:], run.mlp_outputs[:, 1:], atol=1e-5)
    assert run.errors[:, 0].abs().max() == 0
    assert (rm.frozen_replacement_logits(run) - run.logits).abs().max() <= 1e-4


def test_frozen_forward_skips_mlp_compute_and_cleans_up(case):
    rm, tc, tokens, run = case
    calls = []
    mlps = [m for name, m in rm.lm.hf_model.named_modules() if name.endswith(".mlp")]
    assert len(mlps) == rm.n_layers
    inner = [next(iter(m.children())) for m in mlps]  # first projection inside each MLP
    handles = [m.register_forward_hook(lambda *a: calls.append(1)) for m in inner]
    try:
        rm.frozen_forward(tokens, batch_size=2, run=run)
        assert calls == []  # MLPs were bypassed (their output is a constant of the frozen model)
        with torch.no_grad():
            rm.lm.hf_model(input_ids=tokens[None])
        assert len(calls) == rm.n_layers  # and run again afterwards
    finally:
        for h in handles:
            h.remove()
    assert all("forward" not in m.__dict__ for m in mlps)
    assert rm.lm.hf_model.config._attn_implementation == "eager"
