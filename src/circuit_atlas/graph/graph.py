"""The attribution graph: one prompt's direct-effect adjacency plus everything needed to read it.

The attribution engine builds a `Graph`; pruning, scores, export and the web server only read it.
It is immutable (a frozen dataclass whose tensors nobody should modify in place), so a graph can
be shared between threads of the server without copies.

Node order (circuit-tracer's dense order too, `docs/algorithm.md` §4)::

    [ selected features (n_sel) | errors L·P (layer-major) | tokens P | logits n_logits ]

Storage. Only feature and logit nodes have inputs and logits have no outputs, so the square
matrix is mostly structural zeros. We store the rectangle

    adjacency[n_sel + n_logits, n_sel + L·P + P]

whose rows are the targets (selected features, then logits) and whose columns are the sources
(selected features, errors, tokens) in dense order. `adjacency[t, s]` is the direct effect of
source `s` on target `t`. Column indices equal dense indices; storage row `r` is dense row `r`
for features and `r + (L+1)·P` for logits. `dense_adjacency()` builds the square matrix.

Files (`save` / `load`): `graph.safetensors` holds the tensors, `graph.json` the rest, with a
format version. Both round-trip exactly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from circuit_atlas.errors import CircuitAtlasError, GraphFileError, ShapeMismatchError
from circuit_atlas.io.atomic import atomic_files
from circuit_atlas.io.untrusted import UntrustedJsonError, read_json
from circuit_atlas.viewer import get_viewer

GRAPH_FORMAT = "circuit-atlas-graph"
GRAPH_FORMAT_VERSION = 1
TENSORS_FILE = "graph.safetensors"
META_FILE = "graph.json"
MAX_META_BYTES = 256 * 1024 * 1024  # prompts of a million tokens fit; a hostile file does not

NODE_KINDS = ("feature", "error", "token", "logit")


# Tensor fields: name -> (dtype, required rank). Values are coerced to these dtypes on CPU.
_TENSOR_FIELDS: dict[str, tuple[torch.dtype, int]] = {
    "input_ids": (torch.int64, 1),
    "active_features": (torch.int64, 2),
    "activation_values": (torch.float32, 1),
    "selected_features": (torch.int64, 1),
    "logit_token_ids": (torch.int64, 1),
    "logit_probabilities": (torch.float32, 1),
    "adjacency": (torch.float32, 2),
}
_OPTIONAL_TENSOR_FIELDS: dict[str, tuple[torch.dtype, int]] = {"error_norms": (torch.float32, 2)}
_META_FIELDS = (
    "prompt",
    "tokens",
    "logit_tokens",
    "n_layers",
    "vocab_size",
    "model_name",
    "transcoder_scan",
    "transcoder_kind",
    "settings",
)


@dataclass(frozen=True, eq=False)
class Graph:
    """An unpruned attribution graph for one prompt.

    Fields (P = positions, L = `n_layers`):

    - `input_ids` int64 [P]: token ids, including the prepended BOS/special token.
    - `tokens` list[str] (P): each id decoded on its own (the graph JSON's `prompt_tokens`).
    - `prompt` str: the tokenizer's decoding of all ids.
    - `active_features` int64 [n_act, 3]: (layer, position, feature) of every active feature,
      strictly lexicographically sorted (the coalesced sparse order).
    - `activation_values` float32 [n_act]: activation after the activation function.
    - `selected_features` int64 [n_sel]: indices into `active_features` of the feature nodes,
      strictly ascending. Feature node `j` is `active_features[selected_features[j]]`.
    - `logit_token_ids` int64 [n_logits]: vocabulary ids of the logit targets; custom direction
      targets get virtual ids `vocab_size + i` (i = position in the target list).
    - `logit_tokens` list[str] (n_logits): decoded target tokens or custom labels.
    - `logit_probabilities` float32 [n_logits]: target weights (softmax probabilities).
    - `adjacency` float32 [n_sel + n_logits, n_sel + L·P + P]: rows = targets, columns =
      sources (see the module docstring).
    - `n_layers`, `vocab_size` int; `model_name` str.
    - `transcoder_scan` str | list[str] | None: transcoder-set identifier (graph JSON `scan`).
    - `transcoder_kind` str: "plt" or "clt".
    - `settings` dict: attribution settings, stored in JSON form (tuples become lists).
    - `error_norms` float32 [L, P] | None: norm of each error vector, for display.
    """

    input_ids: torch.Tensor
    tokens: list[str]
    prompt: str
    active_features: torch.Tensor
    activation_values: torch.Tensor
    selected_features: torch.Tensor
    logit_token_ids: torch.Tensor
    logit_tokens: list[str]
    logit_probabilities: torch.Tensor
    adjacency: torch.Tensor
    n_layers: int
    vocab_size: int
    model_name: str
    transcoder_scan: str | list[str] | None = None
    transcoder_kind: str = "clt"
    settings: dict[str, Any] = field(default_factory=dict)
    error_norms: torch.Tensor | None = None

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        for name, (dtype, rank) in _TENSOR_FIELDS.items():
            self._coerce_tensor(name, dtype, rank)
        if self.error_norms is not None:
            self._coerce_tensor("error_norms", *_OPTIONAL_TENSOR_FIELDS["error_norms"])
        object.__setattr__(self, "tokens", [str(t) for t in self.tokens])
        object.__setattr__(self, "logit_tokens", [str(t) for t in self.logit_tokens])
        object.__setattr__(self, "settings", _json_normalised(self.settings, "settings"))
        self._check_scalars()
        self._check_features()
        self._check_logits()
        self._check_adjacency()

    def _coerce_tensor(self, name: str, dtype: torch.dtype, rank: int) -> None:
        value = getattr(self, name)
        try:
            tensor = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ShapeMismatchError(f"Graph.{name} cannot be made a tensor: {exc}") from exc
        if tensor.is_floating_point() != dtype.is_floating_point and tensor.numel() > 0:
            raise ShapeMismatchError(
                f"Graph.{name} must be {'a float' if dtype.is_floating_point else 'an integer'} "
                f"tensor, got {tensor.dtype}"
            )
        if tensor.dim() != rank:
            raise ShapeMismatchError(
                f"Graph.{name} must have {rank} dimension(s), got shape {tuple(tensor.shape)}"
            )
        tensor = tensor.detach().to(device="cpu", dtype=dtype).contiguous()
        object.__setattr__(self, name, tensor)

    def _check_scalars(self) -> None:
        for name in ("n_layers", "vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ShapeMismatchError(f"Graph.{name} must be a positive int, got {value!r}")
        if self.n_positions == 0:
            raise ShapeMismatchError("Graph.input_ids is empty: a graph needs at least one token")
        if len(self.tokens) != self.n_positions:
            raise ShapeMismatchError(
                f"Graph.tokens has {len(self.tokens)} strings but input_ids has "
                f"{self.n_positions} positions"
            )
        for name in ("prompt", "model_name"):
            if not isinstance(getattr(self, name), str):
                raise ShapeMismatchError(
                    f"Graph.{name} must be a string, got {type(getattr(self, name)).__name__}")
        scan = self.transcoder_scan
        if isinstance(scan, tuple):
            scan = list(scan)
            object.__setattr__(self, "transcoder_scan", scan)
        if not (scan is None or isinstance(scan, str)
                or (isinstance(scan, list) and all(isinstance(s, str) for s in scan))):
            raise ShapeMismatchError(
                f"Graph.transcoder_scan must be a string, a list of strings or None, got "
                f"{type(scan).__name__}")
        if self.transcoder_kind not in ("plt", "clt"):
            raise ShapeMismatchError(
                f"Graph.transcoder_kind must be 'plt' or 'clt', got {self.transcoder_kind!r}"
            )
        if self.error_norms is not None and tuple(self.error_norms.shape) != (
            self.n_layers,
            self.n_positions,
        ):
            raise ShapeMismatchError(
                f"Graph.error_norms must have shape [n_layers={self.n_layers}, "
                f"P={self.n_positions}], got {tuple(self.error_norms.shape)}"
            )

    def _check_features(self) -> None:
        af = self.active_features
        if af.shape[1] != 3:
            raise ShapeMismatchError(
                f"Graph.active_features must have shape [n_act, 3], got {tuple(af.shape)}"
            )
        if self.activation_values.shape[0] != af.shape[0]:
            raise ShapeMismatchError(
                f"Graph.activation_values has {self.activation_values.shape[0]} entries but "
                f"active_features has {af.shape[0]} rows"
            )
        if af.numel():
            if (af < 0).any():
                raise ShapeMismatchError("Graph.active_features holds negative indices")
            if int(af[:, 0].max()) >= self.n_layers:
                raise ShapeMismatchError(
                    f"Graph.active_features names layer {int(af[:, 0].max())} but the graph "
                    f"has n_layers={self.n_layers}"
                )
            if int(af[:, 1].max()) >= self.n_positions:
                raise ShapeMismatchError(
                    f"Graph.active_features names position {int(af[:, 1].max())} but the "
                    f"prompt has {self.n_positions} positions"
                )
            if not _strictly_lexsorted(af):
                raise ShapeMismatchError(
                    "Graph.active_features must be strictly sorted by (layer, position, feature) "
                    "without duplicates"
                )
        sel = self.selected_features
        if sel.numel():
            if int(sel.min()) < 0 or int(sel.max()) >= af.shape[0]:
                raise ShapeMismatchError(
                    f"Graph.selected_features must index active_features (0..{af.shape[0] - 1})"
                )
            if sel.numel() > 1 and not bool((sel[1:] > sel[:-1]).all()):
                raise ShapeMismatchError("Graph.selected_features must be strictly ascending")

    def _check_logits(self) -> None:
        n = self.logit_token_ids.shape[0]
        if n == 0:
            raise ShapeMismatchError("Graph.logit_token_ids is empty: a graph needs a target")
        if self.logit_probabilities.shape[0] != n or len(self.logit_tokens) != n:
            raise ShapeMismatchError(
                f"Graph has {n} logit_token_ids, {self.logit_probabilities.shape[0]} "
                f"logit_probabilities and {len(self.logit_tokens)} logit_tokens; they must match"
            )
        if bool((self.logit_token_ids < 0).any()):
            raise ShapeMismatchError("Graph.logit_token_ids holds negative ids")
        if bool((self.logit_probabilities < 0).any()):
            raise ShapeMismatchError("Graph.logit_probabilities holds negative weights")

    def _check_adjacency(self) -> None:
        expected = (self.n_targets, self.n_sources)
        if tuple(self.adjacency.shape) != expected:
            raise ShapeMismatchError(
                f"Graph.adjacency must have shape [n_sel + n_logits, n_sel + L*P + P] = "
                f"{list(expected)} (n_sel={self.n_selected}, n_logits={self.n_logits}, "
                f"L={self.n_layers}, P={self.n_positions}), got {list(self.adjacency.shape)}"
            )
        if not bool(torch.isfinite(self.adjacency).all()):
            raise ShapeMismatchError("Graph.adjacency holds NaN or infinite values")

    # ------------------------------------------------------------------ sizes and ranges
    @property
    def n_positions(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_active(self) -> int:
        return int(self.active_features.shape[0])

    @property
    def n_selected(self) -> int:
        return int(self.selected_features.shape[0])

    @property
    def n_logits(self) -> int:
        return int(self.logit_token_ids.shape[0])

    @property
    def n_errors(self) -> int:
        return self.n_layers * self.n_positions

    @property
    def n_sources(self) -> int:
        """Columns of the stored adjacency: features, errors, tokens."""
        return self.n_selected + (self.n_layers + 1) * self.n_positions

    @property
    def n_targets(self) -> int:
        """Rows of the stored adjacency: features, logits."""
        return self.n_selected + self.n_logits

    @property
    def n_nodes(self) -> int:
        """N = n_sel + (L+1)·P + n_logits, the side of `dense_adjacency()`."""
        return self.n_sources + self.n_logits

    @property
    def feature_range(self) -> range:
        return range(0, self.n_selected)

    @property
    def error_range(self) -> range:
        return range(self.n_selected, self.n_selected + self.n_errors)

    @property
    def token_range(self) -> range:
        start = self.n_selected + self.n_errors
        return range(start, start + self.n_positions)

    @property
    def logit_range(self) -> range:
        return range(self.n_sources, self.n_nodes)

    def error_index(self, layer: int, position: int) -> int:
        """Dense index of the error node at (layer, position) (layer-major)."""
        return self.n_selected + layer * self.n_positions + position

    def token_index(self, position: int) -> int:
        return self.n_selected + self.n_errors + position

    def logit_index(self, i: int) -> int:
        return self.n_sources + i

    def storage_row(self, node: int) -> int | None:
        """Row of `adjacency` holding the inputs of dense node `node` (None: no inputs)."""
        if node < self.n_selected:
            return node
        if node >= self.n_sources:
            return node - self.n_sources + self.n_selected
        return None

    @cached_property
    def dense_rows(self) -> torch.Tensor:
        """int64 [n_targets]: dense index of each storage row."""
        rows = torch.arange(self.n_targets)
        rows[self.n_selected :] += self.n_sources - self.n_selected
        return rows

    @cached_property
    def feature_coords(self) -> torch.Tensor:
        """int64 [n_sel, 3]: (layer, position, feature) of each feature node."""
        return self.active_features[self.selected_features]

    @cached_property
    def selected_activations(self) -> torch.Tensor:
        """float32 [n_sel]: activation of each feature node."""
        return self.activation_values[self.selected_features]

    @cached_property
    def logit_weights(self) -> torch.Tensor:
        """float32 [N]: logit probabilities on logit nodes, 0 elsewhere (`docs/algorithm.md` §10)."""
        w = torch.zeros(self.n_nodes, dtype=torch.float32)
        w[self.n_sources :] = self.logit_probabilities
        return w

    def is_virtual_logit(self, i: int) -> bool:
        """True when logit target `i` is a custom direction (virtual id ≥ vocab_size)."""
        return int(self.logit_token_ids[i]) >= self.vocab_size

    # ------------------------------------------------------------------ node identity
    def node_kind(self, node: int) -> str:
        """'feature', 'error', 'token' or 'logit' for a dense node index."""
        if not 0 <= node < self.n_nodes:
            raise IndexError(f"node index {node} out of range 0..{self.n_nodes - 1}")
        if node < self.n_selected:
            return "feature"
        if node < self.n_selected + self.n_errors:
            return "error"
        if node < self.n_sources:
            return "token"
        return "logit"

    def node_id(self, node: int) -> str:
        """The graph-JSON `node_id` (`docs/graph-json.md` §5.2), errors in the `{l}_-1_{p}` form."""
        kind = self.node_kind(node)
        if kind == "feature":
            layer, pos, feat = (int(v) for v in self.feature_coords[node])
            return f"{layer}_{feat}_{pos}"
        if kind == "error":
            layer, pos = divmod(node - self.n_selected, self.n_positions)
            return f"{layer}_-1_{pos}"
        if kind == "token":
            pos = node - self.token_range.start
            return f"E_{int(self.input_ids[pos])}_{pos}"
        i = node - self.n_sources
        return f"{self.n_layers + 1}_{int(self.logit_token_ids[i])}_{self.n_positions - 1}"

    def node_label(self, node: int) -> str:
        """A short human-readable description of a node."""
        kind = self.node_kind(node)
        if kind == "feature":
            layer, pos, feat = (int(v) for v in self.feature_coords[node])
            return f"feature L{layer} #{feat} @{pos} {self.tokens[pos]!r}"
        if kind == "error":
            layer, pos = divmod(node - self.n_selected, self.n_positions)
            return f"error L{layer} @{pos} {self.tokens[pos]!r}"
        if kind == "token":
            pos = node - self.token_range.start
            return f"token @{pos} {self.tokens[pos]!r}"
        i = node - self.n_sources
        return f"logit {self.logit_tokens[i]!r} (p={float(self.logit_probabilities[i]):.3f})"

    def node_ids(self) -> list[str]:
        """All node ids in dense order (a new list; computed once per graph)."""
        return list(self._node_ids)

    @cached_property
    def _node_ids(self) -> tuple[str, ...]:
        return tuple(self.node_id(i) for i in range(self.n_nodes))

    @cached_property
    def _id_to_index(self) -> dict[str, int]:
        return {nid: i for i, nid in enumerate(self._node_ids)}

    def node_index(self, node_id: str) -> int:
        """Dense index of a node id; the legacy error form `0_{l}_{p}` is accepted when it
        does not name a feature node."""
        index = self._id_to_index.get(node_id)
        if index is not None:
            return index
        parts = node_id.split("_")
        if len(parts) == 3 and parts[0] == "0" and all(p.lstrip("-").isdigit() for p in parts):
            layer, pos = int(parts[1]), int(parts[2])
            if 0 <= layer < self.n_layers and 0 <= pos < self.n_positions:
                return self.error_index(layer, pos)
        raise KeyError(f"no node with id {node_id!r} in this graph")

    # ------------------------------------------------------------------ display
    def show(self, **options: Any) -> Any:
        """Render this graph in the explorer inline in a Jupyter notebook.

        Starts (once per kernel) a local explorer server on 127.0.0.1 and returns a view that
        Jupyter displays as an iframe; `options` go to `circuit_atlas.server.notebook.show_graph`
        (slug, node_threshold, edge_threshold, height, url_template for remote notebooks). The
        explorer is the viewer the package installs in `circuit_atlas.viewer`; the graph layer
        itself does not depend on the server.
        """
        viewer = get_viewer()
        if viewer is None:
            raise CircuitAtlasError(
                "Graph.show needs a viewer and none is installed; call "
                "circuit_atlas.viewer.set_viewer(circuit_atlas.show_graph) or use "
                "circuit_atlas.show_graph(graph)"
            )
        return viewer(self, **options)

    # ------------------------------------------------------------------ matrices
    def dense_adjacency(self) -> torch.Tensor:
        """float32 [N, N] in the dense order [features | errors | tokens | logits].

        Error and token rows and logit columns are zero. Costs 4·N² bytes.
        """
        n = self.n_nodes
        dense = torch.zeros(n, n, dtype=torch.float32)
        dense[: self.n_selected, : self.n_sources] = self.adjacency[: self.n_selected]
        dense[self.n_sources :, : self.n_sources] = self.adjacency[self.n_selected :]
        return dense

    # ------------------------------------------------------------------ equality
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Graph):
            return NotImplemented
        for name in list(_TENSOR_FIELDS) + list(_OPTIONAL_TENSOR_FIELDS):
            a, b = getattr(self, name), getattr(other, name)
            if (a is None) != (b is None):
                return False
            if a is not None and (a.dtype != b.dtype or not torch.equal(a, b)):
                return False
        return all(getattr(self, name) == getattr(other, name) for name in _META_FIELDS)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Graph(model={self.model_name!r}, P={self.n_positions}, L={self.n_layers}, "
            f"n_active={self.n_active}, n_selected={self.n_selected}, n_logits={self.n_logits}, "
            f"prompt={self.prompt!r})"
        )

    # ------------------------------------------------------------------ files
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write `graph.safetensors` and `graph.json` into `directory` (created if missing).

        Both files are written under temporary names, fsynced and only then renamed over the old
        ones (`io.atomic.atomic_files`): a save that fails, at any point, leaves the old graph as
        it was and no temp files; a finished save is on disk, not just in the page cache."""
        path = Path(directory)
        if path.exists() and not path.is_dir():
            raise GraphFileError(f"cannot save graph: {path} exists and is not a directory")
        path.mkdir(parents=True, exist_ok=True)
        tensors = {name: getattr(self, name) for name in _TENSOR_FIELDS}
        if self.error_norms is not None:
            tensors["error_norms"] = self.error_norms
        meta = {"format": GRAPH_FORMAT, "format_version": GRAPH_FORMAT_VERSION}
        meta.update({name: getattr(self, name) for name in _META_FIELDS})
        with atomic_files(path / TENSORS_FILE, path / META_FILE) as (tmp_tensors, tmp_meta):
            save_file(tensors, str(tmp_tensors), metadata={"format": GRAPH_FORMAT})
            tmp_meta.write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
        return path

    def first_non_finite(self) -> str | None:
        """Where the graph holds a NaN or infinite number, in words, or None when it holds none.

        Such values come from numerical trouble while tracing (or an edited file); strict JSON
        cannot carry them, so the graph-JSON writer and the explorer refuse the graph with this
        text instead of failing somewhere inside. One cheap sum per tensor finds them (NaN and
        infinities survive a sum); only then is the first one located."""
        for name in ("activation_values", "logit_probabilities", "adjacency", "error_norms"):
            tensor = getattr(self, name)
            if tensor is None or tensor.numel() == 0 or bool(torch.isfinite(tensor.sum())):
                continue
            flat = tensor.reshape(-1)
            for start in range(0, flat.numel(), 1 << 24):
                bad = torch.nonzero(~torch.isfinite(flat[start:start + (1 << 24)]))
                if bad.numel():
                    index = start + int(bad[0])
                    where = [int(i) for i in torch.unravel_index(torch.tensor(index), tensor.shape)]
                    return f"{name}{where} is {float(flat[index])}" + self._feature_at(name, where)
        return None

    def _feature_at(self, name: str, where: list[int]) -> str:
        if name != "activation_values":
            return ""
        layer, position, feature = (int(v) for v in self.active_features[where[0]])
        return f" (layer {layer}, position {position}, feature {feature})"

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> "Graph":
        """Read a graph written by `save`; raises GraphFileError naming the bad file."""
        path = Path(directory)
        if not path.exists():
            raise GraphFileError(f"graph directory {path} does not exist")
        if not path.is_dir():
            raise GraphFileError(f"{path} is not a graph directory (expected a directory with "
                                 f"{META_FILE} and {TENSORS_FILE})")
        meta = _read_meta(path / META_FILE)
        tensors = _read_tensors(path / TENSORS_FILE)
        kwargs: dict[str, Any] = {name: meta[name] for name in _META_FIELDS}
        kwargs.update(tensors)
        try:
            return cls(**kwargs)
        except ShapeMismatchError as exc:
            raise GraphFileError(f"{path}: inconsistent graph files: {exc}") from exc


# ---------------------------------------------------------------------- helpers
def _strictly_lexsorted(rows: torch.Tensor) -> bool:
    """True if the rows of an int matrix are strictly increasing in lexicographic order."""
    if rows.shape[0] < 2:
        return True
    diff = rows[1:] - rows[:-1]
    increasing = torch.zeros(diff.shape[0], dtype=torch.bool)
    equal_so_far = torch.ones(diff.shape[0], dtype=torch.bool)
    for col in range(diff.shape[1]):
        increasing |= equal_so_far & (diff[:, col] > 0)
        equal_so_far &= diff[:, col] == 0
    return bool(increasing.all())


def _json_normalised(value: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Return `value` as it will read back from JSON, so save/load round-trips exactly."""
    if not isinstance(value, Mapping):
        raise ShapeMismatchError(f"Graph.{name} must be a dict, got {type(value).__name__}")
    try:
        return json.loads(json.dumps(dict(value)))
    except (TypeError, ValueError) as exc:
        raise ShapeMismatchError(f"Graph.{name} must be JSON-serialisable: {exc}") from exc


def read_format_json(path: Path, *, kind: str, format_name: str, version_key: str,
                     max_version: int, max_bytes: int | None = None) -> dict[str, Any]:
    """The JSON object of one of our versioned files (`kind` names it in messages): it must exist,
    parse as untrusted JSON, carry `"format": format_name` and an integer version this package
    reads. Every failure is a GraphFileError naming the file; the graph and attention readers
    share it so both refuse the same mistakes in the same words."""
    if not path.is_file():
        raise GraphFileError(f"{kind} file {path} is missing")
    try:
        meta = read_json(path, max_bytes=max_bytes)
    except (OSError, UntrustedJsonError) as exc:
        raise GraphFileError(f"{kind} file {path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != format_name:
        raise GraphFileError(f"{path} is not a circuit-atlas {kind} file (format field missing or "
                             f"not {format_name!r})")
    version = meta.get(version_key)
    if not isinstance(version, int) or version > max_version:
        raise GraphFileError(f"{path} has {version_key} {version!r}; this circuit-atlas reads "
                             f"versions up to {max_version} (upgrade circuit-atlas?)")
    return meta


def read_tensor_file(path: Path, kind: str) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; GraphFileError naming `kind` and the file when it is
    missing or cannot be read."""
    if not path.is_file():
        raise GraphFileError(f"{kind} file {path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise GraphFileError(f"{kind} file {path} is corrupt: {exc}") from exc


def _read_meta(path: Path) -> dict[str, Any]:
    meta = read_format_json(path, kind="graph metadata", format_name=GRAPH_FORMAT,
                            version_key="format_version", max_version=GRAPH_FORMAT_VERSION,
                            max_bytes=MAX_META_BYTES)
    missing = [name for name in _META_FIELDS if name not in meta]
    if missing:
        raise GraphFileError(f"{path} lacks the field(s) {', '.join(missing)}")
    return meta


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    tensors = read_tensor_file(path, "graph tensor")
    missing = [name for name in _TENSOR_FIELDS if name not in tensors]
    if missing:
        raise GraphFileError(f"{path} lacks the tensor(s) {', '.join(missing)}")
    known = set(_TENSOR_FIELDS) | set(_OPTIONAL_TENSOR_FIELDS)
    return {name: t for name, t in tensors.items() if name in known}
