"""The end-to-end loss: KL divergence between the model's next-token distribution and the one it
gives with the trained transcoders in place of its MLPs (`--kl-coefficient`).

Reconstruction error is what transcoders are trained on, but not all errors matter equally to
the model: a small error along a direction the later layers amplify changes the output more
than a large one they ignore. The KL term measures that directly (as in end-to-end SAE training,
Braun et al. 2024): each step a few windows of the training corpus run through the model twice,
once clean (no gradient) and once with every trained layer's output hook replaced by the stack's
reconstruction from that pass's own inputs (for a CLT from every earlier trained layer of the
same pass), and the mean KL over real positions is back-propagated into the stack. The model's
weights stay frozen; only activations carry the gradient. Zeroed positions and padding keep
their original values, as in the tracer and in `evaluate.py`.
"""

from __future__ import annotations

import torch

from circuit_atlas.training.architecture import TranscoderStack
from circuit_atlas.io.corpus import Corpus
from circuit_atlas.training.streaming import TokenWindows, pad_windows, padding_id


class EndToEndLoss:
    """Callable `stack -> KL` drawing `n_windows` fresh windows per call (see module docstring).

    `layers[i]` is the model layer of stack layer i.
    """

    def __init__(self, lm, corpus: Corpus, *, input_hook: str, output_hook: str,
                 layers: list[int], context_length: int, windows: str = "documents",
                 n_windows: int = 8, rank: int = 0, world_size: int = 1) -> None:
        self.lm, self.layers = lm, list(layers)
        self.index = {layer: i for i, layer in enumerate(self.layers)}
        self.input_hook, self.output_hook = input_hook, output_hook
        self.n_windows = n_windows
        self.windows = TokenWindows(corpus, lm.tokenizer, context_length, mode=windows,
                                    rank=rank, world_size=world_size)
        self.pad_id = padding_id(lm.tokenizer)
        self.skip = max(1, lm.n_zeroed_positions)

    def __call__(self, stack: TranscoderStack) -> torch.Tensor:
        tokens, mask = pad_windows([self.windows.next_window() for _ in range(self.n_windows)],
                                   self.pad_id)
        return self.kl(stack, tokens.to(self.lm.device), mask.to(self.lm.device))

    def kl(self, stack: TranscoderStack, tokens: torch.Tensor,
           mask: torch.Tensor) -> torch.Tensor:
        """Mean over real positions of KL(clean ‖ with transcoders), differentiable in `stack`."""
        with torch.no_grad():
            clean = self.lm.forward(tokens, input_hook=self.input_hook,
                                    output_hook=self.output_hook, record_internals=False)
            clean_logp = torch.log_softmax(clean.logits.float(), dim=-1)
        keep = mask.clone()
        keep[:, :self.skip] = False
        acts: dict[int, torch.Tensor] = {}

        def edit(layer: int, x_in: torch.Tensor, y_out: torch.Tensor) -> torch.Tensor:
            if layer not in self.index:
                return y_out
            i = self.index[layer]
            x = x_in[keep].float() / stack.input_scale[i]
            acts[i] = stack.layer_activations(i, x)
            recon = stack.layer_reconstruction(i, acts, x) * stack.target_scale[i]
            out = y_out.clone()
            out[keep] = recon.to(y_out.dtype)
            return out

        edited = self.lm.forward(tokens, input_hook=self.input_hook,
                                 output_hook=self.output_hook, output_edit=edit,
                                 record_internals=False)
        logp = torch.log_softmax(edited.logits.float(), dim=-1)
        kl = (clean_logp.exp() * (clean_logp - logp)).sum(-1)
        return kl[mask].mean()
