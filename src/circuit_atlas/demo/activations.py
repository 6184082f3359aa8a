"""MLP (input, output) pairs of the demo model over toy-world lines, one line per sequence.

Why its own pairs rather than the training package's `ModelActivationSource`: that source
packed documents into long windows when the demo's build was written, so later lines saw earlier
ones as context (it now also offers one document per window, `--layout documents`, which is what
`circuit-atlas train` picks for this model). The demo model was trained on single lines
(`<bos> words <eos>`, right-padded) and every prompt the demo traces is one such line, so
transcoders trained on packed windows would learn activations of contexts the model never saw.
Here each line is its own sequence: `<bos>` + words (no `<eos>`: traced prompts have none),
right-padded in equal-length groups (no padding at all, so no mask is needed), and only real,
non-zeroed positions are kept.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from circuit_atlas.errors import PromptError


def encode_lines(tokenizer, lines: Sequence[str]) -> list[list[int]]:
    """`<bos>` + word ids of each line; a word outside the vocabulary is a user error."""
    unk = tokenizer.unk_token_id
    encoded = []
    for line, ids in zip(lines, tokenizer(list(lines))["input_ids"]):
        if unk is not None and unk in ids:
            raise PromptError(f"toy-world line has a word outside the demo vocabulary: {line!r}")
        encoded.append(list(ids))
    return encoded


def equal_length_batches(token_lists: Sequence[Sequence[int]],
                         batch_size: int) -> Iterator[torch.Tensor]:
    """`[B, P]` batches of sequences of one length each (in order of length, then of input)."""
    groups: dict[int, list[Sequence[int]]] = defaultdict(list)
    for ids in token_lists:
        groups[len(ids)].append(ids)
    for _, group in sorted(groups.items()):
        for start in range(0, len(group), batch_size):
            yield torch.tensor(group[start:start + batch_size], dtype=torch.long)


@torch.no_grad()
def line_activations(lm, token_lists: Sequence[Sequence[int]], *, input_hook: str,
                     output_hook: str, batch_size: int = 256,
                     progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs `[N, L, d]` (float32, CPU) at every non-zeroed position of every sequence.

    The order follows `equal_length_batches`; the trainer shuffles anyway.
    """
    xs, ys = [], []
    skip = max(1, lm.n_zeroed_positions)
    batches = list(equal_length_batches(token_lists, batch_size))
    for tokens in tqdm(batches, desc="model activations", disable=not progress, unit="batch"):
        if tokens.shape[1] <= skip:
            continue
        record = lm.forward(tokens.to(lm.device), input_hook=input_hook, output_hook=output_hook,
                            record_internals=False, compute_logits=False)
        xs.append(torch.stack(record.inputs, dim=2)[:, skip:].reshape(-1, lm.n_layers, lm.d_model))
        ys.append(torch.stack(record.outputs, dim=2)[:, skip:].reshape(-1, lm.n_layers, lm.d_model))
    if not xs:
        raise PromptError("no toy-world line is longer than the zeroed positions; nothing to train on")
    return torch.cat(xs).float().cpu(), torch.cat(ys).float().cpu()
