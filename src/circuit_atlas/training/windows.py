"""Choose the window layout for a model and corpus (`--layout auto`), and check early that a
corpus can feed one training step.

Packing documents into full windows wastes nothing, but it shows the model contexts that begin
mid-document after earlier documents. Models pre-trained on packed text handle that; a model
trained on single documents (like the bundled demo, trained on single lines) does not: its
next-token loss on packed windows of its own training text is 8.4 nats against 1.19 on single
lines, and transcoders trained there learn activations it never produces on real prompts.

`choose_windows` therefore asks the model: it compares the next-token loss of a sample of
documents laid out both ways (the same real tokens scored in both) and takes "packed" only when
that does not make the model noticeably worse. Documents that already fill a window gain nothing
from packing, so such corpora use "documents" without a probe.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from circuit_atlas.io.corpus import Corpus
from circuit_atlas.training.errors import TrainingDataError
from circuit_atlas.training.streaming import TokenWindows, padding_id, window_batches

PROBE_DOCUMENTS = 64
PACKED_TOLERANCE = 1.05  # packed may cost at most 5 % more next-token loss


@dataclass
class WindowChoice:
    mode: str
    reason: str
    loss_documents: float | None = None
    loss_packed: float | None = None

    def to_json(self) -> dict:
        return {"mode": self.mode, "reason": self.reason, "loss_documents": self.loss_documents,
                "loss_packed": self.loss_packed}


def choose_windows(lm, corpus: Corpus, context_length: int, requested: str = "auto",
                   *, batch_size: int = 8) -> WindowChoice:
    """The layout to use: `requested` unless it is "auto" (see module docstring)."""
    if requested != "auto":
        return WindowChoice(requested, "chosen with --layout")
    docs = _sample(corpus, lm.tokenizer)
    if not docs:
        raise TrainingDataError(f"corpus {corpus.description} holds no text")
    median = statistics.median(len(d) for d in docs)
    if median >= context_length:
        return WindowChoice("documents", f"documents mostly fill a {context_length}-token "
                                         "window (median {:.0f} tokens)".format(median))
    doc_windows = [torch.tensor(d[:context_length]) for d in docs]
    packed = _packed(docs, context_length)
    if not packed:
        return WindowChoice("documents", "the sample is shorter than one packed window")
    prefix = docs[0][0]
    loss_docs = _mean_loss(lm, doc_windows, batch_size, context_length, prefix)
    loss_packed = _mean_loss(lm, packed, batch_size, context_length, prefix)
    if loss_packed <= PACKED_TOLERANCE * loss_docs:
        mode, verdict = "packed", "the model predicts packed text as well"
    else:
        mode, verdict = "documents", "the model predicts packed text worse"
    return WindowChoice(mode, f"{verdict}: next-token loss {loss_packed:.3f} packed vs "
                              f"{loss_docs:.3f} one document per window", loss_docs, loss_packed)


def check_corpus_feeds_a_step(corpus: Corpus, tokenizer, context_length: int, mode: str,
                              n_tokens: int, skip_positions: int, world_size: int = 1) -> int:
    """Count usable training positions over one pass (tokenizer only, no model) and raise a
    `TrainingDataError` when they are fewer than one step's `n_tokens` per process.

    Stops counting as soon as there are enough, so a large corpus costs a few documents."""
    windows = TokenWindows(corpus, tokenizer, context_length, mode=mode,
                           world_size=world_size)
    usable = 0
    while usable < n_tokens:
        window = windows.next_window()
        if windows.epoch > 0:
            raise TrainingDataError(
                f"corpus {corpus.description} gives only {usable} usable tokens per pass"
                f"{' per process' if world_size > 1 else ''} in {mode} windows of "
                f"{context_length}, fewer than one training step ({n_tokens} tokens); use a "
                "larger corpus or a smaller --batch-size")
        real = window[skip_positions:]
        usable += int((real != windows.prefix_id).sum()) if windows.prefix_id is not None \
            else int(real.numel())
    return usable


def _sample(corpus: Corpus, tokenizer) -> list[list[int]]:
    windows = TokenWindows(corpus, tokenizer, 2)
    docs = []
    for text in corpus.documents():
        ids = windows.tokenize(text)
        if len(ids) >= 2:
            docs.append(ids)
        if len(docs) == PROBE_DOCUMENTS:
            break
    return docs


def _packed(docs: list[list[int]], context_length: int) -> list[torch.Tensor]:
    """The same documents concatenated and cut into full windows, each starting with the first
    token of the stream's first document (the prefix), like `TokenWindows` packs them."""
    prefix = docs[0][0]
    body = [t for d in docs for t in d][1:]
    step = context_length - 1
    return [torch.tensor([prefix] + body[i:i + step]) for i in range(0, len(body) - step + 1, step)]


@torch.no_grad()
def _mean_loss(lm, windows: list[torch.Tensor], batch_size: int, context_length: int,
               prefix: int) -> float:
    """Mean next-token loss over real targets that are not the prefix token (a document start
    cannot be predicted in a packed stream and is never a target in a document window)."""
    total, count = 0.0, 0
    pad = padding_id(lm.tokenizer)
    for tokens, mask in window_batches(windows, pad, batch_size * context_length):
        logits = lm.forward(tokens.to(lm.device), record_internals=False).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        nll = -logp.gather(-1, tokens[:, 1:, None].to(lm.device)).squeeze(-1)
        real = (mask[:, 1:] & (tokens[:, 1:] != prefix)).to(lm.device)
        total += float(nll[real].sum())
        count += int(real.sum())
    return total / max(count, 1)
