"""Stream (MLP input, MLP output) pairs of every layer from a language model over a corpus.

Documents are tokenised (with the prompt rule's special-token prefix per document, `docs/algorithm.md` §2.1) and
packed into windows of `context_length` tokens, each starting with the prefix token like a
tracer prompt; each batch of windows is run through the model once, recording the input and
output hook of every layer. Position 0 (the BOS attention sink) and prefix tokens are dropped:
their activations are outliers that the tracer never uses (position 0 is a zeroed position
there), and they would dominate the loss. Packing wastes no tokens on padding; later documents
in a window see earlier ones as context, as in most LM pre-training data.

Shuffling: activations of consecutive tokens are strongly correlated, so pairs are collected in
*generations* of `buffer_tokens` tokens from many windows and served in a random order. Each
generation is filled from scratch, so the source's state is just "where the generation started
(corpus position, generator state) and how much of it was served": resuming re-computes one
generation and continues exactly, without saving gigabytes of buffer in the checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from circuit_atlas.io.corpus import Corpus
from circuit_atlas.models.prompts import special_prefix_id
from circuit_atlas.training.errors import TrainingConfigError, TrainingDataError
from circuit_atlas.training.source import SourceState


def special_prefix(tokenizer) -> int | None:
    """The id prepended to each document (the prompt rule: first truthy id of bos, pad, eos)."""
    return special_prefix_id(tokenizer)


class TokenWindows:
    """Packs a corpus into fixed-length token windows; rank r reads documents r, r+W, r+2W, …

    Loops over the corpus forever (epochs), and can resume from `state_dict()`.
    """

    def __init__(self, corpus: Corpus, tokenizer, context_length: int, *, rank: int = 0,
                 world_size: int = 1) -> None:
        if context_length < 2:
            raise TrainingConfigError(f"--context-length must be at least 2, got {context_length}")
        self.corpus, self.tokenizer = corpus, tokenizer
        self.context_length = context_length
        self.rank, self.world_size = rank, world_size
        self.prefix_id = special_prefix(tokenizer)
        self.next_doc = 0
        self.epoch = 0
        self.pending: list[int] = []
        self._tokens_this_epoch = 0
        self._docs: Iterator[str] | None = None

    def tokenize(self, text: str) -> list[int]:
        ids = list(self.tokenizer.encode(text, add_special_tokens=False))
        if self.prefix_id is not None and ids and ids[0] != self.prefix_id:
            ids = [self.prefix_id] + ids
        return ids

    def next_window(self) -> torch.Tensor:
        """The next `context_length` tokens, always starting with the special prefix (when the
        tokenizer has one): a window that begins mid-document gets the prefix prepended, so
        position 0 is the same attention sink as in every prompt the tracer sees."""
        while len(self.pending) < self.context_length:
            ids = self.tokenize(self._next_document())
            self._tokens_this_epoch += len(ids)
            self.pending.extend(ids)
        insert = self.prefix_id is not None and self.pending[0] != self.prefix_id
        n = self.context_length - 1 if insert else self.context_length
        window = ([self.prefix_id] if insert else []) + self.pending[:n]
        del self.pending[:n]
        return torch.tensor(window, dtype=torch.long)

    def _next_document(self) -> str:
        while True:
            if self._docs is None:
                self._docs = self.corpus.documents(self.next_doc)
            text = next(self._docs, None)
            if text is None:
                self._wrap()
                continue
            index = self.next_doc
            self.next_doc += 1
            if index % self.world_size == self.rank:
                return text

    def _wrap(self) -> None:
        if self._tokens_this_epoch < self.context_length:
            raise TrainingDataError(
                f"corpus {self.corpus.description} holds fewer tokens"
                f"{' for each of the ' + str(self.world_size) + ' processes' if self.world_size > 1 else ''}"
                f" than one context window ({self.context_length}); use a larger corpus or a "
                "smaller --context-length")
        self.epoch += 1
        self.next_doc = 0
        self._tokens_this_epoch = 0
        self._docs = None

    def state_dict(self) -> SourceState:
        return {"next_doc": self.next_doc, "epoch": self.epoch,
                "pending": torch.tensor(self.pending, dtype=torch.long)}

    def load_state_dict(self, state: SourceState) -> None:
        self.next_doc = int(state["next_doc"])
        self.epoch = int(state["epoch"])
        self.pending = [int(t) for t in state["pending"].tolist()]
        self._docs = None
        # the interrupted run already read a full epoch or more, so this one is big enough
        self._tokens_this_epoch = self.context_length


class ModelActivationSource:
    """(input-hook, output-hook) pairs `[n, L, d]` of every layer, shuffled in generations."""

    def __init__(self, lm, corpus: Corpus, *, input_hook: str, output_hook: str,
                 context_length: int = 128, model_batch_size: int = 8,
                 buffer_tokens: int = 65536, seed: int = 0, rank: int = 0, world_size: int = 1,
                 store_dtype: torch.dtype = torch.float32, progress: bool = False) -> None:
        lm.check_hooks(input_hook, output_hook)
        if lm.max_positions is not None and context_length > lm.max_positions:
            raise TrainingConfigError(
                f"--context-length {context_length} exceeds the {lm.max_positions} positions of "
                f"model {lm.name}")
        if model_batch_size <= 0 or buffer_tokens <= 0:
            raise TrainingConfigError("--model-batch-size and --buffer-tokens must be positive")
        self.lm = lm
        self.input_hook, self.output_hook = input_hook, output_hook
        self.n_layers, self.d_model = lm.n_layers, lm.d_model
        self.model_batch_size, self.buffer_tokens = model_batch_size, buffer_tokens
        self.store_dtype = store_dtype
        self.skip_positions = max(1, lm.n_zeroed_positions)
        self.windows = TokenWindows(corpus, lm.tokenizer, context_length, rank=rank,
                                    world_size=world_size)
        self.generator = torch.Generator().manual_seed(seed)
        self.progress = progress
        self._fill_state: dict[str, Any] | None = None
        self._buffer: tuple[torch.Tensor, torch.Tensor] | None = None
        self._served = 0
        self._usable_this_epoch = 0

    # -- producing activations ----------------------------------------------------------------
    def usable_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """Boolean `[B, P]`: positions whose activations become training pairs."""
        mask = torch.ones_like(tokens, dtype=torch.bool)
        mask[:, :self.skip_positions] = False
        if self.windows.prefix_id is not None:
            mask &= tokens != self.windows.prefix_id
        return mask

    @torch.no_grad()
    def activations(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pairs at the usable positions of a batch of windows `[B, P]` → `[n, L, d]` each."""
        record = self.lm.forward(tokens, input_hook=self.input_hook,
                                 output_hook=self.output_hook, record_internals=False,
                                 compute_logits=False)
        mask = self.usable_positions(tokens).to(record.inputs[0].device)
        x = torch.stack(record.inputs, dim=2)[mask]
        y = torch.stack(record.outputs, dim=2)[mask]
        return x.to("cpu", self.store_dtype), y.to("cpu", self.store_dtype)

    def _fill(self, n_requested: int) -> None:
        self._fill_state = {"windows": self.windows.state_dict(),
                            "generator": self.generator.get_state()}
        xs, ys, total = [], [], 0
        while total < self.buffer_tokens:
            epoch = self.windows.epoch
            batch = torch.stack([self.windows.next_window()
                                 for _ in range(self.model_batch_size)])
            self._check_epoch(epoch, n_requested)
            x, y = self.activations(batch)
            xs.append(x)
            ys.append(y)
            total += x.shape[0]
            self._usable_this_epoch += x.shape[0]
        perm = torch.randperm(total, generator=self.generator)
        self._buffer = (torch.cat(xs)[perm], torch.cat(ys)[perm])
        self._served = 0

    def _check_epoch(self, epoch_before: int, n_requested: int) -> None:
        if self.windows.epoch == epoch_before:
            return
        if self._usable_this_epoch < n_requested:
            raise TrainingDataError(
                f"corpus {self.windows.corpus.description} gives only {self._usable_this_epoch} "
                f"usable tokens per pass, fewer than one batch ({n_requested} tokens per "
                "process); use a larger corpus or a smaller --batch-size")
        self._usable_this_epoch = 0

    # -- ActivationSource ---------------------------------------------------------------------
    def next_batch(self, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys, need = [], [], n_tokens
        while need > 0:
            if self._buffer is None or self._served >= self._buffer[0].shape[0]:
                self._fill(n_tokens)
            x, y = self._buffer
            take = min(need, x.shape[0] - self._served)
            xs.append(x[self._served:self._served + take])
            ys.append(y[self._served:self._served + take])
            self._served += take
            need -= take
        return torch.cat(xs), torch.cat(ys)

    def state_dict(self) -> SourceState:
        if self._fill_state is None:
            state = {"filled": 0, "served": 0, "generator": self.generator.get_state()}
            windows = self.windows.state_dict()
        else:
            state = {"filled": 1, "served": self._served,
                     "generator": self._fill_state["generator"]}
            windows = self._fill_state["windows"]
        for key, value in windows.items():
            state[f"windows.{key}"] = value
        return state

    def load_state_dict(self, state: SourceState) -> None:
        self.windows.load_state_dict({k[len("windows."):]: v for k, v in state.items()
                                      if k.startswith("windows.")})
        self.generator.set_state(state["generator"])
        self._buffer, self._fill_state = None, None
        if int(state["filled"]):
            self._fill(0)
            self._served = int(state["served"])
