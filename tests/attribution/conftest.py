"""Tiny replacement models for attribution tests, and an independent evaluator of the frozen model.

`FrozenProbe` evaluates the local replacement model *without autograd*: attention patterns and
norm denominators are replayed from the clean pass, each MLP output is held at its clean value
(its linear skip path stays live), and arbitrary vectors can be added at the embedding and at any
output hook. Because that map is affine, the change a source's vector causes in a target's
readout is exactly the source→target edge, which is what the tests compare the graph against.
"""

from __future__ import annotations

import torch

from circuit_atlas.models import FreezeSpec

from ..conftest import CASES, build_model, prompt_ids  # noqa: F401  (re-exported for the tests)


class FrozenProbe:
    """Readouts of the frozen replacement model under added source vectors (no autograd)."""

    def __init__(self, model, run):
        self.model = model
        self.run = run
        tc = model.transcoders
        x = run.mlp_inputs
        self.skip_clean = [tc.skip(l, x[l]) for l in range(model.n_layers)]

    @torch.no_grad()
    def record(self, embedding_delta=None, output_deltas=None):
        tc, run = self.model.transcoders, self.run

        def output_edit(layer, x_in, y_out):
            held = run.mlp_outputs[layer]
            skip_clean = self.skip_clean[layer]
            value = held[None].clone()
            if skip_clean is not None:
                value = value - skip_clean[None] + tc.skip(layer, x_in[0])[None]
            if output_deltas is not None and layer in output_deltas:
                value = value + output_deltas[layer][None]
            return value

        def embedding_edit(emb):
            return emb if embedding_delta is None else emb + embedding_delta[None]

        return self.model.lm.forward(
            run.tokens[None], input_hook=self.model.input_hook, output_hook=self.model.output_hook,
            freeze=FreezeSpec.replayed(run.record), output_edit=output_edit,
            embedding_edit=embedding_edit, record_internals=False,
        )

    @staticmethod
    def feature_readout(record, transcoders, layer, position, feature) -> float:
        w = transcoders.encoder_rows(layer, torch.tensor([feature]))[0]
        return float(record.inputs[layer][0, position] @ w)

    @staticmethod
    def logit_readout(record, vector) -> float:
        return float(record.final_hidden[0, -1] @ vector)
