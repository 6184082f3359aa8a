"""Reading a feature store: `FeatureStore(path).card(layer, feature)` and the frontend JSON.

`FeatureStore` also satisfies the explorer's provider protocol
(`circuit_atlas.server.features.FeatureProvider`: `feature(layer, index) -> dict | None`), so
`circuit-atlas serve GRAPHS --features DIR` shows these dashboards in the feature panel.

Quantile groups are computed when a card is read (`histogram.quantile_groups` over the exact
counts; the number of groups is a reader option) and filled from the build's uniform sample of
active occurrences: in each group, the sampled occurrences with the smallest keys, which are a
uniform sample of the group. Examples are shown highest activation first within a group.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from circuit_atlas.features import storage
from circuit_atlas.features.accumulator import FIXED_POINT_BITS, KIND_SAMPLE, KIND_TOP
from circuit_atlas.features.errors import FeatureStoreError
from circuit_atlas.features.histogram import (
    equal_width_histogram,
    n_bins,
    percentiles,
    quantile_groups,
)
from circuit_atlas.features.keys import split_occurrence
from circuit_atlas.features.labels import read_labels, write_label


@dataclass(frozen=True)
class Example:
    """One context: tokens around the focal token and this feature's activation on each.

    `document` / `window` / `position` locate the focal token: document index in the corpus,
    window index inside the document, position inside that window (`windows.py`).
    """

    document: int
    window: int
    position: int
    activation: float
    token_ids: list[int]
    tokens: list[str]
    activations: list[float]
    focus: int

    def to_frontend(self, repeated: bool = False) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "tokens_acts_list": self.activations,
            "train_token_ind": self.focus,
            "is_repeated_datapoint": repeated,
        }


@dataclass(frozen=True)
class QuantileExamples:
    """Sampled examples with activations in `[lower, upper)`; the group holds `count` of all
    activations, those ranked from `start_fraction` to `end_fraction` (ascending)."""

    name: str
    lower: float
    upper: float
    count: int
    start_fraction: float
    end_fraction: float
    examples: list[Example]


@dataclass(frozen=True)
class TokenEffect:
    """An output token and the feature's direct effect on its logit (decoder · unembedding)."""

    token: str
    token_id: int
    value: float


@dataclass(frozen=True)
class Histogram:
    """Exact counts of positive activations in log bins: bin i holds `edges[i-1] <= a < edges[i]`
    (bin 0 is (0, edges[0]), the last bin [edges[-1], inf))."""

    edges: list[float]
    counts: list[int]


@dataclass(frozen=True)
class FeatureCard:
    """Everything the store knows about one feature."""

    layer: int
    feature: int
    label: str | None
    n_tokens: int
    n_active: int
    n_negative: int
    density: float
    mean_activation: float
    max_activation: float
    histogram: Histogram
    top_examples: list[Example]
    quantile_examples: list[QuantileExamples]
    top_logits: list[TokenEffect]
    bottom_logits: list[TokenEffect]
    complete: bool = True
    percentiles: list[float] = field(default_factory=list)


class FeatureStore:
    """A built (or building) feature store; `path` is its folder or its `features.sqlite`."""

    def __init__(self, path: str | Path, *, n_quantiles: int = 5, examples_per_quantile: int = 5) -> None:
        self.file = storage.store_file(path)
        self.folder = self.file.parent
        if not self.file.is_file():
            raise FeatureStoreError(f"no feature store at {path} ({self.file} is missing); build one "
                                    "with `circuit-atlas features build`")
        # Readers never write the database: opening it read-only leaves shipped or shared stores
        # byte-identical (a read-write open would switch their journal mode), and still reads a
        # store a running build is writing (the builder keeps its WAL files).
        self._conn = storage.connect(self.file, readonly=True)
        self._lock = threading.Lock()
        try:
            self._meta = storage.check_format(self._conn, self.file)
        except BaseException:
            self._conn.close()
            raise
        self.n_quantiles, self.examples_per_quantile = n_quantiles, examples_per_quantile
        self.edges = np.asarray(self._meta["edges"], dtype=np.float32)
        self._vocab: dict[int, str] = {}

    # ------------------------------------------------------------------ basic information
    @property
    def meta(self) -> dict[str, Any]:
        """The store's meta records, refreshed (a build may still be writing)."""
        with self._lock:
            self._meta = storage.read_meta(self._conn)
        return self._meta

    @property
    def n_layers(self) -> int:
        return int(self._meta["transcoders"]["n_layers"])

    @property
    def n_features(self) -> int:
        return int(self._meta["transcoders"]["n_features"])

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete"))

    @property
    def has_occurrence_sketches(self) -> bool:
        """Whether the samples are bottom-k sketches under one occurrence hash (stores built
        since `keys.py` keyed samples by occurrence alone), so they estimate co-activation."""
        return (self._meta.get("builder") or {}).get("sample_keys") == "occurrence"

    @property
    def n_samples(self) -> int:
        """The size of each feature's sample (the build's `n_samples`)."""
        return int(self._meta["settings"]["n_samples"])

    def activation_count(self, layer: int, feature: int) -> int:
        """How many tokens of the corpus the feature fires on (positive activations)."""
        self._check(layer, feature)
        with self._lock:
            row = self._conn.execute("SELECT n_active FROM stats WHERE layer = ? AND feature = ?",
                                     (layer, feature)).fetchone()
        return int(row[0]) if row else 0

    def sample_keys(self, layer: int, feature: int) -> np.ndarray:
        """The sampling keys of a feature's sampled occurrences, ascending (int64)."""
        self._check(layer, feature)
        with self._lock:
            rows = self._conn.execute(
                "SELECT sample_key FROM examples WHERE layer = ? AND feature = ? AND kind = ? "
                "ORDER BY sample_key", (layer, feature, KIND_SAMPLE)).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def logit_effects(self, layer: int, feature: int) -> dict[int, float]:
        """{token id: direct logit effect} of the feature's top and bottom output tokens."""
        self._check(layer, feature)
        with self._lock:
            row = self._conn.execute(
                "SELECT top_ids, top_values, bottom_ids, bottom_values FROM logits "
                "WHERE layer = ? AND feature = ?", (layer, feature)).fetchone()
        if row is None:
            return {}
        out = {}
        for ids_blob, values_blob in ((row[0], row[1]), (row[2], row[3])):
            ids = np.frombuffer(ids_blob, dtype="<i4").tolist()
            out.update(zip(ids, np.frombuffer(values_blob, dtype="<f4").astype(float).tolist()))
        return out

    def _check(self, layer: int, feature: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise FeatureStoreError(f"layer {layer} is out of range 0..{self.n_layers - 1}")
        if not 0 <= feature < self.n_features:
            raise FeatureStoreError(f"feature {feature} is out of range 0..{self.n_features - 1}")

    # ------------------------------------------------------------------ cards
    def card(self, layer: int, feature: int) -> FeatureCard:
        """The dashboard of `feature` of `layer`."""
        self._check(layer, feature)
        meta = self.meta
        with self._lock:
            stats = self._conn.execute(
                "SELECT n_active, n_negative, sum_fixed, hist_offset, histogram FROM stats "
                "WHERE layer = ? AND feature = ?", (layer, feature)).fetchone()
            rows = self._conn.execute(
                "SELECT kind, oid, activation, sample_key, focus, tokens, acts FROM examples "
                "WHERE layer = ? AND feature = ?", (layer, feature)).fetchall()
            logit_row = self._conn.execute(
                "SELECT top_ids, top_values, bottom_ids, bottom_values FROM logits "
                "WHERE layer = ? AND feature = ?", (layer, feature)).fetchone()
        n_active, n_negative, sum_fixed = (stats[0], stats[1], stats[2]) if stats else (0, 0, 0)
        counts = (storage.unpack_histogram(stats[3], stats[4], n_bins(self.edges)) if stats
                  else np.zeros(n_bins(self.edges), dtype=np.int64))
        tops = sorted((r for r in rows if r[0] == KIND_TOP), key=lambda r: (-r[2], r[1]))
        samples = sorted((r for r in rows if r[0] == KIND_SAMPLE), key=lambda r: (r[3], r[1]))
        top_examples = [self._example(r) for r in tops]
        max_activation = top_examples[0].activation if top_examples else 0.0
        n_tokens = int(meta["progress"]["tokens"])
        top_logits, bottom_logits = self._logits(logit_row)
        labels = read_labels(self.folder)
        return FeatureCard(
            layer=layer,
            feature=feature,
            label=labels.get((layer, feature)),
            n_tokens=n_tokens,
            n_active=int(n_active),
            n_negative=int(n_negative),
            density=n_active / n_tokens if n_tokens else 0.0,
            mean_activation=sum_fixed / (1 << FIXED_POINT_BITS) / n_active if n_active else 0.0,
            max_activation=max_activation,
            histogram=Histogram(self.edges.tolist(), counts.tolist()),
            top_examples=top_examples,
            quantile_examples=self._quantiles(counts, samples),
            top_logits=top_logits,
            bottom_logits=bottom_logits,
            complete=bool(meta.get("complete")),
            percentiles=percentiles(counts, self.edges, max_activation) if n_active else [],
        )

    def _quantiles(self, counts: np.ndarray, samples: list) -> list[QuantileExamples]:
        groups = quantile_groups(counts, self.edges, self.n_quantiles)
        result = []
        for group in reversed(groups):  # highest activations first, as dashboards show them
            chosen = [r for r in samples if group.lower <= r[2] < group.upper]
            chosen = chosen[:self.examples_per_quantile]
            examples = sorted((self._example(r) for r in chosen), key=lambda e: -e.activation)
            name = (f"Quantile {100 * group.start_fraction:.0f}–{100 * group.end_fraction:.0f}% "
                    f"({_fmt(group.lower)} ≤ a < {_fmt(group.upper)})")
            result.append(QuantileExamples(name, group.lower, group.upper, group.count,
                                           group.start_fraction, group.end_fraction, examples))
        return result

    def _example(self, row) -> Example:
        _, oid, activation, _, focus, token_blob, act_blob = row
        doc, window, focal = split_occurrence(int(oid))
        ids = np.frombuffer(token_blob, dtype="<i4").tolist()
        return Example(document=doc, window=window, position=focal, activation=float(activation),
                       token_ids=ids, tokens=self.token_strings(ids),
                       activations=np.frombuffer(act_blob, dtype="<f4").astype(float).tolist(),
                       focus=int(focus))

    def _logits(self, row) -> tuple[list[TokenEffect], list[TokenEffect]]:
        if row is None:
            return [], []
        out = []
        for ids_blob, values_blob in ((row[0], row[1]), (row[2], row[3])):
            ids = np.frombuffer(ids_blob, dtype="<i4").tolist()
            values = np.frombuffer(values_blob, dtype="<f4").astype(float).tolist()
            out.append([TokenEffect(t, i, v) for t, i, v in zip(self.token_strings(ids), ids, values)])
        return out[0], out[1]

    def token_strings(self, ids: list[int]) -> list[str]:
        """Token strings from the store's vocabulary table (cached)."""
        missing = sorted({i for i in ids if i not in self._vocab})
        if missing:
            with self._lock:
                for start in range(0, len(missing), 500):
                    chunk = missing[start:start + 500]
                    marks = ",".join("?" * len(chunk))
                    for i, token in self._conn.execute(
                            f"SELECT id, token FROM vocab WHERE id IN ({marks})", chunk):
                        self._vocab[i] = token
        return [self._vocab.get(i, f"<id {i}>") for i in ids]

    # ------------------------------------------------------------------ frontend JSON
    def to_frontend_json(self, layer: int, feature: int) -> dict[str, Any]:
        """The `docs/graph-json.md` §10.2 object (plus `label`, `layer`, `n_tokens`, `mean_activation`)."""
        card = self.card(layer, feature)
        groups, seen = [], set()

        def render(examples: list[Example]) -> list[dict[str, Any]]:
            out = []
            for ex in examples:
                key = (ex.document, ex.window)
                out.append(ex.to_frontend(repeated=key in seen))
                seen.add(key)
            return out

        if card.top_examples:
            groups.append({"quantile_name": "Top activations", "examples": render(card.top_examples)})
        for group in card.quantile_examples:
            groups.append({"quantile_name": group.name, "examples": render(group.examples)})
        scan = self._meta.get("transcoders_scan") or self._meta["transcoders"]["kind"]
        return {
            "transcoder_id": f"{scan}/layer_{layer}",
            "index": feature,
            "layer": layer,
            "label": card.label,
            "examples_quantiles": groups,
            "top_logits": [t.token for t in card.top_logits],
            "bottom_logits": [t.token for t in card.bottom_logits],
            "act_min": 0.0,
            "act_max": card.max_activation,
            "quantile_values": card.percentiles,
            "histogram": equal_width_histogram(np.asarray(card.histogram.counts), self.edges,
                                               card.max_activation),
            "activation_frequency": card.density,
            "mean_activation": card.mean_activation,
            "n_tokens": card.n_tokens,
            "isDead": card.complete and card.n_active == 0,
        }

    def feature(self, layer: int, index: int) -> dict[str, Any] | None:
        """Explorer provider protocol: the §10.2 object, or None outside the store's range."""
        if not (0 <= layer < self.n_layers and 0 <= index < self.n_features):
            return None
        return self.to_frontend_json(layer, index)

    # ------------------------------------------------------------------ labels
    def label(self, layer: int, feature: int) -> str | None:
        return read_labels(self.folder).get((layer, feature))

    def labels(self) -> dict[tuple[int, int], str]:
        """Every label, keyed (layer, feature): the `labels` argument of the graph exporters."""
        return read_labels(self.folder)

    def set_label(self, layer: int, feature: int, text: str | None) -> None:
        """Label a feature (None or "" removes the label); kept in `labels.json` beside the store."""
        self._check(layer, feature)
        write_label(self.folder, layer, feature, text)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.folder)!r}, layers={self.n_layers}, features={self.n_features})"


def open_feature_store(path: str | Path) -> FeatureStore | None:
    """The store in folder `path`, or None when the folder holds no `features.sqlite` (the
    explorer then tries its other feature layouts)."""
    if not storage.store_file(path).is_file():
        return None
    return FeatureStore(path)


def _fmt(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:.3g}"
