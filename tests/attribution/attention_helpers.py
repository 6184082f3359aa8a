"""Reading attention straight from transformers, for tests of attention explanations.

`TransformersCapture` runs a plain transformers forward pass (no circuit-atlas hooks or attention
function): an attention implementation registered here records the query and key that the real
attention module hands over, then calls that family's own eager attention, whose softmax weights
it keeps. Scores are computed here from those tensors, so the tests compare circuit-atlas with what
transformers computes, not with circuit-atlas's own code.
"""

from __future__ import annotations

import sys

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

CAPTURE = "circuit_atlas_test_capture"


class TransformersCapture:
    """Queries, keys and attention weights of one transformers forward pass, by layer."""

    def __init__(self, lm, tokens: torch.Tensor, *, residual_edit=None) -> None:
        """`residual_edit(layer, hidden) -> hidden` may change the residual entering a layer."""
        self.calls: dict[int, dict] = {}
        self.residuals: dict[int, torch.Tensor] = {}
        hf = lm.hf_model

        def capture(module, query, key, value, attention_mask, **kwargs):
            eager = sys.modules[type(module).__module__].eager_attention_forward
            out, weights = eager(module, query, key, value, attention_mask, **kwargs)
            scaling = kwargs.get("scaling")
            self.calls[module.layer_idx] = {
                "query": query.detach(), "key": key.detach(), "weights": weights.detach(),
                "scaling": query.shape[-1] ** -0.5 if scaling is None else float(scaling),
                "softcap": kwargs.get("softcap"),
            }
            return out, weights

        AttentionInterface.register(CAPTURE, capture)
        AttentionMaskInterface.register(CAPTURE, eager_mask)
        handles = []
        for index, layer in enumerate(lm.adapter.layer_modules(hf)):
            handles.append(layer.register_forward_pre_hook(self._residual_hook(index, residual_edit),
                                                           with_kwargs=True))
        previous = hf.config._attn_implementation
        hf.set_attn_implementation(CAPTURE)
        try:
            with torch.no_grad():
                hf(input_ids=tokens.reshape(1, -1).to(lm.device), use_cache=False)
        finally:
            hf.set_attn_implementation(previous)
            for handle in handles:
                handle.remove()

    def _residual_hook(self, index, edit):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if edit is not None:
                hidden = edit(index, hidden)
            self.residuals[index] = hidden.detach()
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        return hook

    def score(self, layer: int, head: int, query: int, key: int) -> float:
        """Pre-soft-cap score `scaling · q·k` of the query head (its key head shared under GQA)."""
        call = self.calls[layer]
        q, k = call["query"][0].double(), call["key"][0].double()
        kv_head = head // (q.shape[0] // k.shape[0])
        return float(call["scaling"] * (q[head, query] @ k[kv_head, key]))

    def weight(self, layer: int, head: int, query: int, key: int) -> float:
        return float(self.calls[layer]["weights"][0, head, query, key])
