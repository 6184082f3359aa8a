"""Creating a store, or reopening one to continue it: identity, locks, checks.

A store records what it was built from (`identity`: model and transcoder shapes, a fingerprint
of their weights, the corpus, the settings and the builder's rules); a rerun continues it only
when all of these match, so an interrupted build can never be continued with other inputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import torch

from circuit_atlas.features import storage
from circuit_atlas.features.errors import FeatureStoreError
from circuit_atlas.features.histogram import default_edges
from circuit_atlas.features.settings import BuildSettings
from circuit_atlas.features.windows import Cursor
from circuit_atlas.models.placement import loaded_weights
from circuit_atlas.models.token_text import token_display_strings
from circuit_atlas.io.corpus import Corpus

# The builder's rules that change what a store holds beyond its settings: top examples are
# distinct contexts (`accumulator.py`), sample keys depend on the occurrence alone (`keys.py`).
# Stores from before these rules lack the record, so they are read but never continued.
BUILDER = {"top_examples": "distinct contexts", "sample_keys": "occurrence"}
BUILD_CACHE_MIB = 256


def _fingerprint(model) -> str:
    """A hash of a few weights of the model and of the transcoders, read as float32 on the CPU,
    so a store is never resumed with other weights that happen to have the same shapes."""
    tc, lm = model.transcoders, model.lm
    few = torch.arange(min(4, tc.n_features))
    embedding = lm.module(lm.adapter.embed_tokens)
    with loaded_weights(embedding):  # a device_map may have offloaded it
        first_rows = embedding.weight[:4].detach().clone()
    pieces = [
        first_rows,
        lm.unembedding[:4],
        tc.encoder_rows(0, few),
        tc.decoder_rows_all(tc.n_layers - 1, few),
    ]
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(piece.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def identity(model, corpus: Corpus, settings: BuildSettings) -> dict[str, Any]:
    lm, tc = model.lm, model.transcoders
    return {
        "model": {
            "family": lm.family, "n_layers": lm.n_layers, "d_model": lm.d_model,
            "vocab_size": lm.vocab_size, "dtype": str(lm.dtype).removeprefix("torch."),
            "n_zeroed_positions": model.n_zeroed_positions,
        },
        "transcoders": {
            "kind": tc.kind, "n_layers": tc.n_layers, "d_model": tc.d_model,
            "n_features": tc.n_features, "activation": tc.activation_name,
            "input_hook": tc.input_hook, "output_hook": tc.output_hook,
        },
        "weights": _fingerprint(model),
        "corpus": {"description": corpus.description,
                   "encoding_errors": getattr(corpus, "encoding_errors", "strict")},
        "settings": asdict(settings),
        "builder": BUILDER,
    }


@contextlib.contextmanager
def exclusive_build(out: Path) -> Iterator[None]:
    """One builder per store: a second one fails at once instead of waiting on SQLite locks."""
    if out.exists() and not out.is_dir():
        raise FeatureStoreError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: SQLite's own locking still applies
        yield
        return
    fd = os.open(out / ".build.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise FeatureStoreError(f"another `features build` is writing to {out}") from None
        yield
    finally:
        os.close(fd)


def initial_meta(model, identity: dict[str, Any]) -> dict[str, Any]:
    """The meta of a new store (or shard) before any work: its identity, the names the model and
    transcoders were loaded by (as the user gave them), the histogram edges and an empty cursor."""
    return {**identity, "model_name": model.lm.name, "transcoders_scan": model.transcoders.scan,
            "edges": default_edges().tolist(), "progress": progress_dict(Cursor(), 0, 0),
            "logits_layers": [], "complete": False, "stop_reason": None}


def open_store(out: Path, model, identity: dict[str, Any]) -> tuple[sqlite3.Connection, bool]:
    """(connection, resumed): a fresh store is initialised; an existing one must match."""
    file = storage.store_file(out)
    conn = storage.connect(file, create=True, cache_mib=BUILD_CACHE_MIB)
    try:
        if not storage.table_names(conn):
            storage.initialize(conn, initial_meta(model, identity), vocabulary(model.lm))
            return conn, False
        meta = storage.check_format(conn, file)
        if check_same_build(meta, identity, out):
            storage.set_meta(conn, "corpus", identity["corpus"])
        check_budget(conn, meta, identity["settings"]["max_tokens"], out)
        return conn, True
    except BaseException:
        conn.close()
        raise


def check_same_build(meta: dict[str, Any], identity: dict[str, Any], out: Path) -> bool:
    """Every input and setting must match, except the budget (`check_budget`) and one switch:
    a build that stopped at a document that is not UTF-8 may continue with `--encoding-errors
    replace` (as its error message suggests). Every document read before decoded strictly, so
    it reads the same with replacement, and the store equals a fresh replacing build. Returns
    True for that switch; the caller records it in the store."""
    differences = []
    switched = False
    for section, wanted in identity.items():
        stored = meta.get(section)
        if section == "corpus":
            stored = _corpus_record(stored)
        if isinstance(wanted, dict) and isinstance(stored, dict):
            for key in sorted(set(wanted) | set(stored)):
                if (section, key) == ("settings", "max_tokens"):
                    continue
                if ((section, key) == ("corpus", "encoding_errors")
                        and (stored.get(key), wanted.get(key)) == ("strict", "replace")):
                    switched = True
                    continue
                if stored.get(key) != wanted.get(key):
                    differences.append(f"{section}.{key}: stored {stored.get(key)!r}, now {wanted.get(key)!r}")
        elif stored != wanted:
            differences.append(f"{section}: stored {stored!r}, now {wanted!r}")
    if differences:
        raise FeatureStoreError(
            f"the feature store in {out} was built with other inputs or settings, so this run "
            "cannot continue it (use the same command to resume, or a new --out):\n  "
            + "\n  ".join(differences)
        )
    return switched


_REPLACED = " (non-UTF-8 bytes replaced)"


def _corpus_record(stored: Any) -> Any:
    """A stored corpus record in today's form: stores made before `encoding_errors` was its own
    field marked replacing corpora in the description."""
    if not isinstance(stored, dict) or "encoding_errors" in stored:
        return stored
    description = stored.get("description")
    replaced = isinstance(description, str) and description.endswith(_REPLACED)
    return {**stored, "description": description.removesuffix(_REPLACED) if replaced else description,
            "encoding_errors": "replace" if replaced else "strict"}


def check_budget(conn: sqlite3.Connection, meta: dict[str, Any], budget: int | None, out: Path) -> None:
    """An unfinished build may continue under another --max-tokens (the result equals a fresh
    build with the new budget) as long as it has not processed more than that; a finished one
    cannot be changed."""
    stored = meta["settings"].get("max_tokens")
    if budget == stored:
        return
    done = meta["progress"]["tokens"]
    if meta.get("complete"):
        raise FeatureStoreError(
            f"the feature store in {out} is complete ({done:,} tokens, --max-tokens {stored}); "
            "build into a new --out to use another budget"
        )
    if budget is not None and budget < done:
        raise FeatureStoreError(
            f"the feature store in {out} already holds {done:,} tokens, more than --max-tokens {budget}"
        )
    conn.execute("BEGIN IMMEDIATE")
    storage.set_meta(conn, "settings", {**meta["settings"], "max_tokens": budget})
    conn.execute("COMMIT")


def vocabulary(lm) -> list[str]:
    """Token strings for every id of the model, as they read inside running text (so dashboards
    that join them keep word spaces); ids the tokenizer cannot decode become `<id N>`."""
    ids = list(range(lm.vocab_size))
    if lm.tokenizer is None:
        return [f"<id {i}>" for i in ids]
    return token_display_strings(lm.tokenizer, ids)


def progress_dict(cursor: Cursor, tokens: int, windows: int) -> dict[str, int]:
    return {"doc": cursor.doc, "window": cursor.window, "tokens": tokens, "windows": windows}
