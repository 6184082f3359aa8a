"""What every format reader produces: per-layer pieces in memory orientation, plus the facts of
the set, before they are checked against each other and assembled (`assemble.py`).

Readers and writers depend on this module, never on `core.Transcoders`, so `Transcoders` can
call the writers without an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from circuit_atlas.transcoders.decoders import DecoderStore
from circuit_atlas.transcoders.encoders import EncoderStore

T = TypeVar("T")

KINDS = ("plt", "clt")

# Resolves entry `index` of a config's `transcoders` list (a path or an hf:// URI) to a local file.
EntryResolver = Callable[[int, str], Path]


def progress(items: Sequence[T], desc: str) -> Iterable[T]:
    """tqdm over per-layer work (reading a 26-layer CLT takes a while); silent for tiny sets
    and when stderr is not a terminal."""
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False, disable=True if len(items) < 4 else None)


@dataclass(frozen=True)
class ReadOptions:
    """How to read a set: target dtype, which matrices stay on disk (lazy), and how to find the
    files a `transcoders` list names (`resolve`: the hub loader passes one that downloads them;
    None: paths relative to the folder)."""

    dtype: torch.dtype = torch.float32
    lazy_decoder: bool = True
    lazy_encoder: bool = False
    resolve: EntryResolver | None = None


@dataclass
class LayerParts:
    """One source layer in memory orientation (`docs/formats.md` §1); `origin` names its file."""

    origin: str
    W_enc: torch.Tensor | EncoderStore  # [F, d] or a store
    b_enc: torch.Tensor  # [F]
    b_dec: torch.Tensor  # [d] (of target layer = this layer)
    W_dec: torch.Tensor | DecoderStore  # [F, d] / [F, T, d] or a store
    threshold: torch.Tensor | None = None  # [F]
    W_skip: torch.Tensor | None = None  # [d_out, d_in]
    k: int | None = None  # a scalar `k` tensor found in the file (circuit-tracer TopK writer)


@dataclass
class SetParts:
    """A whole set as a reader found it: the layers plus what its config says.

    `activation` / `k` are the config's (None: decide from the weights); `where` names the
    config file in messages."""

    kind: str
    layers: list[LayerParts]
    input_hook: str
    output_hook: str
    where: str
    activation: str | None = None
    k: object = None
    scan: str | None = None
    model_name: str | None = None
