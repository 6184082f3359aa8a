"""The compact engine's memory plan: close to the measured peak, linear in the prompt, and what
the refusals are made of.

The measured peak is the growth of the resident-set high-water mark during `attribute`, in a
fresh process (the benchmark's own measurement, `benchmarks/attribution.py`), on a scaled-down
version of the benchmark's CPU shape so that it runs in well under a minute.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from circuit_atlas.attribution.memory import AttentionShape, plan_compact_memory

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "attribution.py"
TOLERANCE = 0.25


def _clear_refs_available() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _clear_refs_available(),
                    reason="the peak is read from Linux's per-process high-water mark")
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_plan_is_within_a_quarter_of_the_measured_peak(kind):
    shape = ["--shape", "cpu", "--d-model", "512", "--heads", "8", "--kv-heads", "4", "--features", "8192",
             "--l0", "64", "--max-feature-nodes", "512", "--batch-size", "32"]
    # One run's resident-set high-water mark differs between identical runs (393-576 MiB for the
    # CLT case on one machine, depending on which buffers the allocator happens to reuse), and only
    # downwards from what the plan must cover: the larger of two runs is the closer measure.
    results = [_measure(shape, kind) for _ in range(2)]
    result = max(results, key=lambda r: r["peak_mib"])
    peak, estimate = result["peak_mib"], result["estimate_mib"]
    assert result["rows"] == 512 + 10 or result["rows"] > 500
    assert abs(estimate - peak) <= TOLERANCE * peak, f"plan {estimate} MiB, measured peak {peak} MiB"


def _measure(shape: list[str], kind: str) -> dict:
    """One fresh benchmark process on a 768-token prompt: its rows, peak and plan in MiB."""
    out = subprocess.run([sys.executable, str(BENCHMARK), *shape, "--one", kind, "768"],
                         capture_output=True, text=True, check=True, timeout=900)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _plan(n_positions: int, **overrides):
    settings = dict(n_layers=4, n_positions=n_positions, d_model=2048, attention=AttentionShape(16, 8, 128),
                    n_active=128 * 4 * n_positions, n_decoder_slots=int(1.2 * 2.5 * 128 * 4 * n_positions),
                    n_selected=4096, n_logits=10, batch_size=64, dtype=torch.float32, sweep_budget=1 << 30)
    settings.update(overrides)
    return plan_compact_memory(**settings)


def test_plan_grows_at_most_linearly_with_the_prompt():
    totals = [_plan(n).total for n in (1024, 2048, 4096, 8192)]
    for shorter, longer in zip(totals, totals[1:]):
        assert longer <= 2.0 * shorter
    assert totals[2] < 16 * 2**30  # the benchmark's 4096-token CLT plan stays far from the machine's size


def test_gpu_plan_puts_rows_on_the_host_and_bounds_the_backward():
    plan = _plan(8192, dtype=torch.bfloat16, row_device_is_host=True, sweep_budget=8 << 30, n_selected=8192)
    assert "row store" in plan.host and "row store" not in plan.device
    assert plan.device_phases["batched backward"] <= (8 << 30) + (96 << 20)
    everything = _plan(8192, dtype=torch.bfloat16, row_device_is_host=True, sweep_budget=None, n_selected=8192)
    assert everything.device_total > plan.device_total  # without a budget the whole batch is planned


@pytest.mark.parametrize("case", ["llama-plt-skip", "llama-clt"])
def test_slot_counts_planned_from_counts_equal_the_plan_laid_out(case, monkeypatch):
    """The plan is checked before the decoder plan exists: its counts must be the plan's."""
    from circuit_atlas.attribution import decoders

    from .conftest import build_model, prompt_ids

    monkeypatch.setattr(decoders, "BLOCK_BYTES", 48 * 4 * 40)  # small blocks: classes split up
    model = build_model(case, n_features=96)
    run = model.run(prompt_ids(model, length=15, seed=7))
    active, values = run.activations.indices().t(), run.activations.values()
    plan = decoders.plan_decoders(model.transcoders, active, values, 15, torch.float32, active.device)
    slots, largest = decoders.plan_sizes(active, 15, model.transcoders, torch.float32)
    assert slots == plan.slots > 0
    assert largest == plan.largest_block_slots
    assert any(len(blocks) > 3 for blocks in plan.blocks)
