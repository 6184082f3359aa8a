"""The compact engine: the dense engine's graph with memory that grows linearly with the prompt.

Same rows, same selection, same graph as `dense.py` (tested edge for edge); what changes is what is
held in memory:

- gradients: a reverse sweep one layer at a time (`sweep.py`) instead of every layer's batched
  gradient at once;
- decoder vectors: indices and activations only (`decoders.py`); rows are gathered from the
  transcoders a block at a time, or kept resident while a budget allows;
- attention: `O(P)` states instead of `P²` patterns, in the clean run and in every frozen pass
  (`models/attention.py`);
- the row buffer: exact values only for the columns that can still be selected, summaries for the
  rest, and exact forward-mode fill-in when a dropped column turns out to matter (`store.py`,
  `fill.py`).

Exploration (`max_feature_nodes` below the active count) visits features in rounds of
`update_interval × batch_size`, each round the most influential ones not yet visited, exactly as
the dense engine does: the kept columns' influence is exact, and every dropped column is either
certified by its upper bound to lie below the round's cut or filled in and ranked exactly.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from circuit_atlas.attribution.context import BatchStrategy, Trace, TraceResult
from circuit_atlas.attribution.decoders import DecoderPlan, plan_decoders
from circuit_atlas.attribution.dense import encoder_rows
from circuit_atlas.attribution.exploration import influence_and_weights
from circuit_atlas.attribution.fill import fill_batch_size, fill_columns
from circuit_atlas.attribution.memory import CompactPlan, plan_for_trace
from circuit_atlas.attribution.rows import LOGIT_LAYER, Injection
from circuit_atlas.attribution.store import FILL_STEP, RowStore, RowTargets, capacity_columns, n_row_groups
from circuit_atlas.attribution.sweep import BatchRows, LayerSweep, SweepInputs, plan_batches

# A dropped column is filled in when its bound reaches the cut within this relative margin
# (float rounding of the bound and of the exact influence).
BOUND_MARGIN = 1e-4
ASSEMBLY_CHUNK = 1024


def trace_compact(trace: Trace, strategy: BatchStrategy) -> TraceResult:
    plan = plan_for_trace(trace, strategy)
    plan.check(trace.settings.memory_limit, trace.device)
    engine = _CompactEngine(trace, strategy, plan)
    try:
        engine.logit_rows()
        engine.feature_rows()
    finally:
        engine.bar.close()
    adjacency, selected = engine.assemble()
    facts = {"memory_estimate_bytes": int(plan.device_total if trace.device.type != "cpu" else plan.total),
             "filled_columns": int(engine.store.filled), "kept_columns": int(engine.store.capacity_columns)}
    return TraceResult(adjacency, selected, strategy, facts)


def round_size(trace: Trace) -> int:
    """Features chosen per exploration round."""
    return trace.settings.update_interval * trace.settings.batch_size


class _CompactEngine:
    def __init__(self, trace: Trace, strategy: BatchStrategy, plan: CompactPlan):
        self.trace = trace
        model, run = trace.model, trace.run
        dtype = trace.compute_dtype
        self.batch_size = trace.settings.batch_size
        self.decoders: DecoderPlan = plan_decoders(model.transcoders, trace.active, trace.activation_values,
                                                   trace.n_positions, dtype, trace.device)
        self.decoders.cache(model.transcoders, plan.decoder_cache_budget)
        copies = 1 if strategy == "vmap" else self.batch_size

        def frozen_for(length: int):
            return model.frozen_forward(run.tokens, batch_size=copies, run=run, length=length)

        inputs = SweepInputs(self.decoders, run.errors.to(dtype), run.token_vectors.to(dtype), trace.n_active,
                             model.transcoders)
        self.sweep = LayerSweep(frozen_for, inputs, strategy, plan.sweep_budget, model.frozen_hops(run))
        n_rows = trace.n_logits + trace.n_selected
        self.n_groups = n_row_groups(n_rows, self.batch_size)
        self.batches_done = 0
        self.store = RowStore(n_active=trace.n_active, n_fixed=self.sweep.n_fixed, capacity_rows=n_rows,
                              capacity_columns=capacity_columns(trace.n_selected, trace.n_active,
                                                                round_size(trace), FILL_STEP),
                              n_groups=self.n_groups, d_model=model.d_model, vector_dtype=dtype)
        self.active_cpu = trace.active.cpu()
        self.values_cpu = trace.activation_values.float().cpu()
        self.fill_batch = fill_batch_size(trace.n_positions, model.d_model,
                                          torch.tensor([], dtype=dtype).element_size(), plan.fill_budget)
        self.bar = tqdm(total=n_rows, desc="attribution rows", unit="row",
                        disable=not trace.settings.progress, leave=False)

    # --- rows --------------------------------------------------------------------------------------
    def _group(self) -> int:
        total = math.ceil((self.trace.n_logits + self.trace.n_selected) / self.batch_size)
        return min(self.n_groups - 1, self.batches_done * self.n_groups // max(1, total))

    def _add(self, rows: BatchRows, nodes: torch.Tensor, bases: torch.Tensor, targets: RowTargets) -> None:
        """Store a batch's rows (or a part of it: the group advances per whole batch)."""
        self.store.add(rows.features, rows.fixed, nodes, bases, self._group(), targets)
        self.bar.update(int(nodes.numel()))

    def logit_rows(self) -> None:
        """Logit rows first. Before any column is dropped their full rows rank every feature
        exactly by direct influence; the strongest columns are then kept."""
        trace, store = self.trace, self.store
        targets = trace.logit_targets
        weights = targets.probabilities.float()
        influence = torch.zeros(trace.n_active)
        full_rows = []  # every column of the logit rows, exact only now (kept columns chosen below)
        for start in range(0, trace.n_logits, self.batch_size):
            vectors = targets.vectors[start : start + self.batch_size].to(trace.device)
            count = vectors.shape[0]
            positions = torch.full((count,), trace.n_positions - 1, dtype=torch.long)
            layers = torch.full((count,), LOGIT_LAYER, dtype=torch.long)
            injection = Injection(layers.to(trace.device), positions.to(trace.device), vectors)
            for part, rows in self.sweep.rows_in_parts(injection):
                sums = (rows.features.abs().sum(1) + rows.fixed.abs().sum(1)).clamp_min(1e-8).cpu()
                base = weights[start : start + count][part]
                influence += ((base / sums)[None] @ rows.features.abs().cpu()).flatten()
                nodes = (torch.arange(start, start + count) + trace.n_active)[part]
                self._add(rows, nodes, base, RowTargets(layers[part], positions[part], vectors[part]))
                if not store.keeps_all:
                    full_rows.append(rows.features.cpu())
                del rows
            self.batches_done += 1
        if not store.keeps_all:
            full = torch.cat(full_rows)
            del full_rows
            order = torch.argsort(influence, descending=True, stable=True)[: store.capacity_columns]
            columns = torch.sort(order).values
            store.keep(columns, full[:, columns])

    def feature_rows(self) -> None:
        trace = self.trace
        if trace.n_selected == 0:
            return
        if trace.n_selected == trace.n_active:
            self._rows_for(torch.arange(trace.n_active), torch.ones(trace.n_active))
            return
        visited = 0
        step = round_size(trace)
        while visited < trace.n_selected:
            count = min(step, trace.n_selected - visited)
            chosen, bases = self._choose(count)
            self._rows_for(chosen, bases)
            visited += count

    def _rows_for(self, features: torch.Tensor, bases: torch.Tensor) -> None:
        """Compute and store the rows of `features` (active indices), a layer and a stretch of
        positions per batch (see `sweep.plan_batches`)."""
        trace = self.trace
        triples = self.active_cpu[features]
        device = trace.device
        for slots in plan_batches(triples[:, 0], triples[:, 1], self.batch_size, trace.n_positions):
            batch = features[slots]
            triples = self.active_cpu[batch]
            vectors = encoder_rows(trace.model.transcoders, triples, device, trace.compute_dtype)
            layers, positions = triples[:, 0], triples[:, 1]
            injection = Injection(layers.to(device), positions.to(device), vectors)
            for part, rows in self.sweep.rows_in_parts(injection):
                self._add(rows, batch[part], bases[slots][part],
                          RowTargets(layers[part], positions[part], vectors[part]))
                del rows
            self.batches_done += 1

    # --- exploration ---------------------------------------------------------------------------------
    def _influence(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact influence of every kept slot `[capacity_columns]` and every row's node weight."""
        store = self.store
        n = store.n_rows
        nodes = store.nodes[:n]
        is_logit = nodes >= self.trace.n_active
        width = store.capacity_columns + store.n_fixed
        compact_nodes = torch.where(is_logit, nodes - self.trace.n_active + width,
                                    store.slot_of[nodes.clamp_max(self.trace.n_active - 1)])
        layers = torch.where(is_logit, torch.full_like(nodes, self.trace.n_layers),
                             self.active_cpu[nodes.clamp_max(self.trace.n_active - 1), 0])
        # A store keeping every column sums each row as the dense engine does (same rounding).
        sums = None if store.keeps_all else store.abs_sums[:n]
        influence, weights = influence_and_weights(store.rows(), compact_nodes, self.trace.logit_targets.probabilities,
                                                   width, layers, sums)
        return influence[: store.capacity_columns], weights

    def _choose(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The `count` most influential unvisited features (ties: lower index first) and their
        influence — the dense engine's choice, certified or completed by fill-in."""
        store, n_active = self.store, self.trace.n_active
        influence, weights = self._influence()
        scores = torch.full((n_active,), -math.inf)
        kept = store.column_of >= 0
        scores[store.column_of[kept]] = influence[kept]
        scores[store.visited] = -math.inf
        if store.keeps_all:
            return self._top(scores, count)
        dropped = store.slot_of < 0
        bounds = store.upper_bounds(weights)
        scores[dropped & (bounds == 0)] = 0.0  # no influence at all: exactly 0
        unresolved = dropped & (bounds > 0)
        while True:
            cut = self._cut(scores, count)
            need = unresolved & (bounds * (1 + BOUND_MARGIN) >= cut)
            if not bool(need.any()):
                break
            ranked = torch.nonzero(need).flatten()
            ranked = ranked[torch.argsort(bounds[ranked], descending=True, stable=True)][:FILL_STEP]
            exact = self._fill(ranked, weights, scores, count)
            scores[ranked] = exact
            unresolved[ranked] = False
        chosen, chosen_scores = self._top(scores, count)
        missing = chosen[store.slot_of[chosen] < 0]  # zero-influence columns picked by index
        if missing.numel():
            self._make_room(missing.numel(), scores, count)
            has_mass = store.has_mass(missing)
            values = self._columns(missing[has_mass]) if bool(has_mass.any()) else None
            slots = store.keep(missing, None)
            if values is not None:
                store.values[: store.n_rows, slots[has_mass]] = values
        return chosen, chosen_scores

    @staticmethod
    def _top(scores: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        order = torch.argsort(scores, descending=True, stable=True)[:count]
        return order, scores[order].clamp_min(0.0)

    @staticmethod
    def _cut(scores: torch.Tensor, count: int) -> float:
        """The `count`-th largest known score (−inf when fewer are known)."""
        finite = scores[scores > -math.inf]
        if finite.numel() < count:
            return -math.inf
        return float(torch.topk(finite, count).values[-1])

    def _fill(self, columns: torch.Tensor, weights: torch.Tensor, scores: torch.Tensor, count: int) -> torch.Tensor:
        """Fill dropped `columns` in exactly; returns their exact influence."""
        store = self.store
        self._make_room(columns.numel(), scores, count)
        values = self._columns(columns)
        store.keep(columns, values)
        n = store.n_rows
        scale = weights / store.abs_sums[:n].clamp_min(1e-8)
        return (scale[None] @ values.abs()).flatten()

    def _columns(self, columns: torch.Tensor) -> torch.Tensor:
        store = self.store
        self.store.filled += int(columns.numel())
        return fill_columns(self.trace.model, self.trace.run, self.active_cpu, self.values_cpu, columns,
                            store.targets, store.n_rows, self.fill_batch)

    def _make_room(self, needed: int, scores: torch.Tensor, count: int) -> None:
        """Free `needed` slots by dropping the weakest unvisited kept columns outside the current
        top `count` (they cannot be chosen in this round: the cut only rises)."""
        store = self.store
        short = needed - store.free_slots()
        if short <= 0:
            return
        kept_columns = torch.sort(store.column_of[store.column_of >= 0]).values  # ties: lower index first
        candidates = kept_columns[~store.visited[kept_columns]]
        order = torch.argsort(scores[candidates], descending=True, stable=True)
        evictable = candidates[order[count:]]
        if evictable.numel() < short:
            raise RuntimeError("compact row buffer: no kept column can make room for a fill-in")
        store.drop(evictable[evictable.numel() - short :])

    # --- assembly ------------------------------------------------------------------------------------
    def assemble(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Adjacency `[features ascending | logits] × [selected | errors | tokens]`."""
        store, n_logits, n_active = self.store, self.trace.n_logits, self.trace.n_active
        n = store.n_rows
        nodes = store.nodes[:n]
        feature_rows = torch.nonzero(nodes < n_active).flatten()
        selected, order = torch.sort(nodes[feature_rows])
        row_order = torch.cat([feature_rows[order], torch.nonzero(nodes >= n_active).flatten()])
        # logit rows in target order
        logit_rows = row_order[selected.numel():]
        row_order[selected.numel():] = logit_rows[torch.argsort(nodes[logit_rows])]
        columns = torch.cat([store.slot_of[selected], torch.arange(store.capacity_columns,
                                                                    store.capacity_columns + store.n_fixed)])
        destination = torch.empty(n, dtype=torch.long)
        destination[row_order] = torch.arange(n)
        adjacency = torch.empty(n, columns.numel())
        for start in range(0, n, ASSEMBLY_CHUNK):
            block = store.values[start : min(n, start + ASSEMBLY_CHUNK)].index_select(1, columns)
            adjacency.index_copy_(0, destination[start : start + block.shape[0]], block)
        return adjacency, selected
