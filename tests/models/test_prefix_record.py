"""`prefix_record` cuts every recorded tensor along its position axis.

Per-head q/k norm scales are `[B,H,P,1]` in Gemma-3 but `[B,P,H,1]` in Qwen3; a prefix of a
Gemma-3 record once cut the heads axis instead, so frozen passes over a prefix (which attribution
runs for prompts of 64 tokens and more) failed. Checked against a pass run on the prefix itself.
"""

from __future__ import annotations

import pytest
import torch

import circuit_atlas
from circuit_atlas.errors import ShapeMismatchError
from circuit_atlas.models import FreezeSpec
from circuit_atlas.models.freeze import ForwardRecord, norm_position_axis, prefix_record
from circuit_atlas.models.tiny import tiny_language_model
from circuit_atlas.transcoders.random import random_transcoders

QK_NORM_AXIS = {"gemma3": 2, "qwen3": 1}  # where each family's per-head norm puts the positions


def _lm(family: str):
    return tiny_language_model(family, seed=1, n_layers=2, d_model=32, max_positions=128)


def _tokens(lm, length: int) -> torch.Tensor:
    ids = torch.randint(4, lm.vocab_size, (1, length), generator=torch.Generator().manual_seed(2))
    return ids.to(lm.device)


@pytest.mark.parametrize("family", list(QK_NORM_AXIS))
@pytest.mark.parametrize("states", [False, True], ids=["patterns", "states"])
def test_prefix_of_a_long_record_replays_the_prefix(family, states):
    lm, length, prefix = _lm(family), 80, 67
    tokens = _tokens(lm, length)
    with torch.no_grad():
        record = lm.forward(tokens, attention_states=states)
        short = lm.forward(tokens[:, :prefix], freeze=FreezeSpec.replayed(prefix_record(record, prefix)))
        direct = lm.forward(tokens[:, :prefix])
    head_norms = [path for path in record.norm_scales if record.norm_scales[path].dim() == 4]
    assert head_norms, "the family should have per-head q/k norms"
    for path in head_norms:
        assert record.norm_position_axes[path] == QK_NORM_AXIS[family]
        assert record.norm_scales[path].shape[QK_NORM_AXIS[family]] == length
    torch.testing.assert_close(short.logits, direct.logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", list(QK_NORM_AXIS))
def test_as_many_positions_as_heads_is_not_ambiguous(family):
    """With 4 heads and 4 positions both axes have the prompt's length: the recorded axis decides."""
    lm = _lm(family)
    tokens = _tokens(lm, 4)
    with torch.no_grad():
        record = lm.forward(tokens)
        short = lm.forward(tokens[:, :3], freeze=FreezeSpec.replayed(prefix_record(record, 3)))
        direct = lm.forward(tokens[:, :3])
    torch.testing.assert_close(short.logits, direct.logits, rtol=1e-5, atol=1e-5)
    # A record built by hand without the axes is refused rather than cut along the wrong axis.
    bare = ForwardRecord(tokens=record.tokens, embeddings=record.embeddings, inputs=[], outputs=[],
                         final_hidden=record.final_hidden, logits=None, norm_scales=record.norm_scales)
    path = next(p for p, s in record.norm_scales.items() if s.dim() == 4)
    with pytest.raises(ShapeMismatchError, match="which axis"):
        norm_position_axis(bare, path)


def test_frozen_forward_over_a_prefix_of_a_long_gemma3_prompt():
    """The replacement model's prefix pass (what attribution batches use) on a Gemma-3 prompt
    longer than 64 tokens: its values are the first positions of the full frozen pass."""
    lm = _lm("gemma3")
    tc = random_transcoders("clt", n_layers=2, d_model=32, n_features=24, seed=5,
                            input_hook="hook_resid_mid", output_hook="hook_mlp_out")
    model = circuit_atlas.load(lm, tc)
    tokens = _tokens(lm, 80)[0]
    run = model.run(tokens)
    full = model.frozen_forward(tokens, batch_size=2, run=run)
    short = model.frozen_forward(tokens, batch_size=2, run=run, length=70)
    assert short.final_hidden.shape[1] == 70
    torch.testing.assert_close(short.final_hidden, full.final_hidden[:, :70], rtol=1e-5, atol=1e-5)
    for layer in range(2):
        torch.testing.assert_close(short.inputs[layer], full.inputs[layer][:, :70], rtol=1e-5, atol=1e-5)
