"""Stream (MLP input, MLP output) pairs of the trained layers from a language model over a corpus.

Documents are tokenised (with the prompt rule's special-token prefix per document,
`docs/algorithm.md` §2.1) and cut into windows of at most `context_length` tokens, each starting
with the prefix token like a tracer prompt, in one of two layouts (`WINDOW_MODES`):

- "packed": documents are concatenated and cut into full windows. No padding is wasted, and
  later documents see earlier ones as context, as in most LM pre-training data.
- "documents": every window is one document (a long one is cut into several windows, each
  with the prefix), right-padded to the longest window of its model batch. The padding never
  becomes training data and never enters a loss or a statistic. This is the only right layout
  for a model trained on single documents (the demo model saw single lines: packed windows are
  text it cannot predict), and the one whose contexts look like tracer prompts.

`choose_windows` picks one for a model and corpus (`--layout auto`). Each batch of windows is
run through the model once, recording the input and output hook of every layer. Position 0 (the
BOS attention sink), prefix tokens and padding are dropped: the first two are outliers the tracer
never uses (position 0 is a zeroed position there) and would dominate the loss.

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

WINDOW_MODES = ("packed", "documents")


def special_prefix(tokenizer) -> int | None:
    """The id prepended to each document (the prompt rule: first truthy id of bos, pad, eos)."""
    return special_prefix_id(tokenizer)


class TokenWindows:
    """Cuts a corpus into token windows (`mode`: see module docstring); rank r reads documents
    r, r+W, r+2W, …

    Loops over the corpus forever (epochs), and can resume from `state_dict()`.
    """

    def __init__(self, corpus: Corpus, tokenizer, context_length: int, *, rank: int = 0,
                 world_size: int = 1, mode: str = "packed") -> None:
        if context_length < 2:
            raise TrainingConfigError(f"--context-length must be at least 2, got {context_length}")
        if mode not in WINDOW_MODES:
            raise TrainingConfigError(f"--layout must be one of {', '.join(WINDOW_MODES)} or "
                                      f"auto, got {mode!r}")
        self.corpus, self.tokenizer = corpus, tokenizer
        self.mode = mode
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
        """The next window, always starting with the special prefix (when the tokenizer has
        one): a window that begins mid-document gets the prefix prepended, so position 0 is the
        same attention sink as in every prompt the tracer sees. Packed windows have exactly
        `context_length` tokens, document windows at most that many."""
        if self.mode == "documents":
            return self._document_window()
        while len(self.pending) < self.context_length:
            ids = self.tokenize(self._next_document())
            self._tokens_this_epoch += len(ids)
            self.pending.extend(ids)
        insert = self.prefix_id is not None and self.pending[0] != self.prefix_id
        n = self.context_length - 1 if insert else self.context_length
        window = ([self.prefix_id] if insert else []) + self.pending[:n]
        del self.pending[:n]
        return torch.tensor(window, dtype=torch.long)

    def _document_window(self) -> torch.Tensor:
        """The rest of the current document (or the next one), up to `context_length` tokens."""
        while not self.pending:
            ids = self.tokenize(self._next_document())
            self._tokens_this_epoch += len(ids)
            self.pending = ids
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
        each = f" for each of the {self.world_size} processes" if self.world_size > 1 else ""
        if self.mode == "documents" and self._tokens_this_epoch < 2:
            raise TrainingDataError(f"corpus {self.corpus.description} holds no text{each}")
        if self.mode == "packed" and self._tokens_this_epoch < self.context_length:
            raise TrainingDataError(
                f"corpus {self.corpus.description} holds fewer tokens{each} than one context "
                f"window ({self.context_length}); use a larger corpus or a smaller "
                "--context-length")
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


class _PassComplete(Exception):
    """Raised inside a model pass once every trained layer is recorded (ends the pass)."""


def pad_windows(windows: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded `[B, P]` tokens and the `[B, P]` mask of real tokens. Right padding needs no
    attention mask in a causal model: real tokens never attend to the pads after them."""
    width = max(int(w.numel()) for w in windows)
    tokens = torch.full((len(windows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(windows), width, dtype=torch.bool)
    for row, window in enumerate(windows):
        tokens[row, :window.numel()] = window
        mask[row, :window.numel()] = True
    return tokens, mask


def padding_id(tokenizer) -> int:
    """The id written into padding (never read: padded positions are masked everywhere)."""
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def window_batches(windows: list[torch.Tensor], pad_id: int,
                   token_budget: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Model batches of the given windows, sorted by length so that little padding is needed,
    each with at most `token_budget` padded tokens (and at least one window)."""
    ordered = sorted(windows, key=lambda w: int(w.numel()))
    batches, current = [], []
    for window in ordered:
        if current and (len(current) + 1) * int(window.numel()) > token_budget:
            batches.append(pad_windows(current, pad_id))
            current = []
        current.append(window)
    if current:
        batches.append(pad_windows(current, pad_id))
    return batches


class ModelActivationSource:
    """(input-hook, output-hook) pairs `[n, L, d]` of the trained `layers` (default: all),
    shuffled in generations."""

    def __init__(self, lm, corpus: Corpus, *, input_hook: str, output_hook: str,
                 context_length: int = 128, model_batch_size: int = 8,
                 buffer_tokens: int = 65536, seed: int = 0, rank: int = 0, world_size: int = 1,
                 store_dtype: torch.dtype = torch.float32, progress: bool = False,
                 windows: str = "packed", layers: list[int] | None = None) -> None:
        lm.check_hooks(input_hook, output_hook)
        if lm.max_positions is not None and context_length > lm.max_positions:
            raise TrainingConfigError(
                f"--context-length {context_length} exceeds the {lm.max_positions} positions of "
                f"model {lm.name}")
        if model_batch_size <= 0 or buffer_tokens <= 0:
            raise TrainingConfigError("--model-batch-size and --buffer-tokens must be positive")
        self.lm = lm
        self.input_hook, self.output_hook = input_hook, output_hook
        self.layers = list(range(lm.n_layers)) if layers is None else list(layers)
        self.n_layers, self.d_model = len(self.layers), lm.d_model
        self.model_batch_size, self.buffer_tokens = model_batch_size, buffer_tokens
        self.store_dtype = store_dtype
        self.skip_positions = max(1, lm.n_zeroed_positions)
        self.windows = TokenWindows(corpus, lm.tokenizer, context_length, rank=rank,
                                    world_size=world_size, mode=windows)
        self.pad_id = padding_id(lm.tokenizer)
        self.generator = torch.Generator().manual_seed(seed)
        self.progress = progress
        self._fill_state: dict[str, Any] | None = None
        self._buffer: tuple[torch.Tensor, torch.Tensor] | None = None
        self._served = 0
        self._usable_this_epoch = 0

    # -- producing activations ----------------------------------------------------------------
    def usable_positions(self, tokens: torch.Tensor,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
        """Boolean `[B, P]`: positions whose activations become training pairs (real tokens,
        past the zeroed positions, not the prefix token)."""
        usable = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask.clone()
        usable[:, :self.skip_positions] = False
        if self.windows.prefix_id is not None:
            usable &= tokens != self.windows.prefix_id
        return usable

    @torch.no_grad()
    def activations(self, tokens: torch.Tensor,
                    mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pairs at the usable positions of a batch of windows `[B, P]` → `[n, L, d]` each.

        The pass stops after the last trained layer: the layers above it cannot change the
        values recorded below, and skipping them (and the unembedding) is free speed when
        training early layers."""
        captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        wanted, last = set(self.layers), max(self.layers)

        def capture(layer: int, x_in: torch.Tensor, y_out: torch.Tensor) -> torch.Tensor:
            if layer in wanted:
                captured[layer] = (x_in, y_out)
            if layer == last:
                raise _PassComplete
            return y_out

        try:
            self.lm.forward(tokens, input_hook=self.input_hook, output_hook=self.output_hook,
                            output_edit=capture, record_internals=False, compute_logits=False)
        except _PassComplete:
            pass
        usable = self.usable_positions(tokens, mask).to(captured[last][0].device)
        x = torch.stack([captured[layer][0] for layer in self.layers], dim=2)[usable]
        y = torch.stack([captured[layer][1] for layer in self.layers], dim=2)[usable]
        return x.to("cpu", self.store_dtype), y.to("cpu", self.store_dtype)

    def _model_batches(self, n_requested: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """One model pass worth of windows: `model_batch_size` packed windows, or document
        windows holding as many real tokens as that (sorted by length into padded batches)."""
        if self.windows.mode == "packed":
            return [(torch.stack([self._next_window(n_requested)
                                  for _ in range(self.model_batch_size)]), None)]
        budget = self.model_batch_size * self.windows.context_length
        windows, total = [], 0
        while total < budget:
            windows.append(self._next_window(n_requested))
            total += int(windows[-1].numel())
        return window_batches(windows, self.pad_id, budget)

    def _next_window(self, n_requested: int) -> torch.Tensor:
        """The next window, counting its usable positions per pass over the corpus: a pass
        that ends with fewer than one batch of them means the corpus is too small."""
        epoch = self.windows.epoch
        window = self.windows.next_window()
        if self.windows.epoch != epoch:
            if self._usable_this_epoch < n_requested:
                raise TrainingDataError(
                    f"corpus {self.windows.corpus.description} gives only "
                    f"{self._usable_this_epoch} usable tokens per pass, fewer than one batch "
                    f"({n_requested} tokens per process); use a larger corpus or a smaller "
                    "--batch-size")
            self._usable_this_epoch = 0
        self._usable_this_epoch += int(self.usable_positions(window[None]).sum())
        return window

    def _fill(self, n_requested: int) -> None:
        self._fill_state = {"windows": self.windows.state_dict(),
                            "generator": self.generator.get_state()}
        xs, ys, total = [], [], 0
        while total < self.buffer_tokens:
            for tokens, mask in self._model_batches(n_requested):
                x, y = self.activations(tokens, mask)
                xs.append(x)
                ys.append(y)
                total += x.shape[0]
        perm = torch.randperm(total, generator=self.generator)
        self._buffer = (torch.cat(xs)[perm], torch.cat(ys)[perm])
        self._served = 0

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
        # the interrupted run counted this pass over the corpus already (and found it big enough)
        self._usable_this_epoch = 1 << 62
        if int(state["filled"]):
            self._fill(0)
            self._served = int(state["served"])
