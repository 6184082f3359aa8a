"""`circuit-atlas train` with its defaults against EleutherAI's sparsify with its defaults.

The comparison of issue 18: the demo model, a per-layer transcoder of the layer-2 MLP, 1024
latents, TopK k=8, ~3.0M training tokens of single toy-world lines (seed 101), evaluated on
10 000 held-out lines (seed 202, ~72k tokens) by one evaluation function for both sides:

* FVU and L0 of the layer-2 MLP output at every real position after BOS;
* "never fire": the share of latents that fire on none of the held-out tokens;
* loss recovered: next-token loss with layer 2's MLP output replaced by the reconstruction,
  relative to zero-ablating that MLP (1 = as good as the model, 0 = as bad as no MLP);
* training throughput (tokens/s, the model's passes included) from each side's own timing.

Our side is the command line exactly as a user types it (only what must be given, plus
`--layers 2 --features 1024 --activation topk --k 8 --tokens N`); everything else is a default,
and the set evaluated is the one it exported. Sparsify's side is optional
(`--sparsify-python`, a Python with `eai-sparsify`; see `benchmarks/training_sparsify.py`):
without it, the table quotes the figures measured for issue 18.

    python benchmarks/training_comparison.py --work /tmp/cmp \\
        [--sparsify-python /path/to/sparsify-venv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
TRAIN_LINES, HELDOUT_LINES, TRAIN_SEED, HELDOUT_SEED, LAYER = 420_000, 10_000, 101, 202, 2
HOLDOUT_EVERY = 20
# Issue 18's run of sparsify 1.3.3 with its defaults, quoted when it is not rerun here.
ISSUE_SPARSIFY = {"fvu": 0.0003, "l0": 8.0, "never_fire": 0.62, "loss_recovered": 0.998,
                  "tokens_per_second": 29_000}


def write_corpora(work: Path) -> tuple[Path, Path]:
    """Training lines as JSONL (with the documents `train` holds out added, so its training part
    is the same `TRAIN_LINES` lines the sparsify side reads) and held-out lines."""
    from circuit_atlas.demo import bundle, toyworld

    world = bundle.demo_world()
    train, held_out = work / "train.jsonl", work / "heldout.jsonl"
    if not train.exists():
        lines = toyworld.generate_corpus(world, TRAIN_LINES, seed=TRAIN_SEED)
        filler = iter(toyworld.generate_corpus(world, TRAIN_LINES // (HOLDOUT_EVERY - 1) + 1,
                                               seed=TRAIN_SEED + 1))
        rows: list[str] = []
        for line in lines:  # `train` holds out every HOLDOUT_EVERY-th document: put filler there
            if len(rows) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1:
                rows.append(next(filler))
            rows.append(line)
        train.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    if not held_out.exists():
        lines = toyworld.generate_corpus(world, HELDOUT_LINES, seed=HELDOUT_SEED)
        held_out.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))
    return train, held_out


def train_ours(work: Path, corpus: Path, tokens: int, extra: list[str], name: str) -> Path:
    out = work / name
    if (out / "summary.json").exists():
        return out
    command = [sys.executable, "-m", "circuit_atlas.cli.main", "train", "--model", "demo",
               "--corpus", str(corpus), "--kind", "plt", "--layers", str(LAYER), "--features",
               "1024", "--activation", "topk", "--k", "8", "--tokens", str(tokens), "--out",
               str(out), "--quiet", *extra]
    print("$", " ".join(command[1:]), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    print(f"  {time.perf_counter() - started:.0f} s", flush=True)
    return out


def train_sparsify(work: Path, python: str) -> Path:
    out = work / "sparsify"
    if not (out / "timing.json").exists():
        subprocess.run([python, str(ROOT / "benchmarks" / "training_sparsify.py"), "--out",
                        str(out)], check=True, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    return out


def ours_coder(folder: Path):
    """(input hook, encode-decode function) of our exported layer-2 transcoder."""
    from circuit_atlas.training.init import load_base_set
    from circuit_atlas.transcoders.activations import apply_activation

    base = load_base_set(str(folder / "transcoders"))
    part = base.layers[LAYER]

    def code(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        acts = apply_activation(base.activation, x @ part.W_enc.T + part.b_enc,
                                part.threshold, base.k)
        return acts, acts @ part.W_dec + part.b_dec

    return base.input_hook, code


def trained_coder(folder: Path):
    """(input hook, encode-decode function) of the stack as it was trained: the final
    checkpoint's weights in normalised units and the training activation, scales applied here.
    Scored on the same tokens as the export, it shows what the export keeps or loses."""
    from safetensors.torch import load_file

    from circuit_atlas.training.architecture import TranscoderStack
    from circuit_atlas.training.config import architecture_from_dict

    state = json.loads((folder / "checkpoint" / "state.json").read_text())
    stack = TranscoderStack(architecture_from_dict(state["architecture"]))
    stack.load_state_dict(load_file(str(folder / "checkpoint" / "model.safetensors")))
    stack.eval()

    def code(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = stack(x[:, None, :] / stack.input_scale[None, :, None])
        return out.acts[:, 0], out.recon[:, 0] * stack.target_scale[0]

    return state["metadata"]["input_hook"], code


def sparsify_coder(folder: Path):
    """Sparsify's transcoder: TopK over ReLU'd pre-activations of the MLP's input."""
    from safetensors.torch import load_file

    weights = load_file(str(next(folder.glob("*/layers.2.mlp")) / "sae.safetensors"))
    k = 8

    def code(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = torch.relu(x @ weights["encoder.weight"].T + weights["encoder.bias"])
        values, indices = pre.topk(k, dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, indices, values)
        return acts, acts @ weights["W_dec"] + weights["b_dec"]

    return "mlp.hook_in", code


@torch.no_grad()
def evaluate(lm, batches, input_hook: str, code) -> dict:
    """One evaluation for both sides (see module docstring)."""
    sq_err = sq_tot = 0.0
    sum_y = torch.zeros(lm.d_model, dtype=torch.float64)
    n = active = 0
    fired = None
    ce = {"clean": 0.0, "replaced": 0.0, "zero": 0.0}
    targets = 0
    for tokens, mask in batches:
        keep = mask.clone()
        keep[:, 0] = False
        record = {}

        def grab(layer, x_in, y_out):
            if layer == LAYER:
                record["x"], record["y"] = x_in, y_out
            return y_out

        clean = lm.forward(tokens, input_hook=input_hook, output_hook="hook_mlp_out",
                           output_edit=grab, record_internals=False)
        x, y = record["x"][keep].float(), record["y"][keep].double()
        acts, recon = code(x)
        sq_err += float((y - recon.double()).pow(2).sum())
        sq_tot += float(y.pow(2).sum())
        sum_y += y.sum(0)
        n += y.shape[0]
        active += int((acts != 0).sum())
        fired = (acts != 0).any(0) if fired is None else fired | (acts != 0).any(0)

        def replace(layer, x_in, y_out, zero=False):
            if layer != LAYER:
                return y_out
            out = y_out.clone()
            out[keep] = 0 if zero else code(x_in[keep].float())[1].to(y_out.dtype)
            return out

        replaced = lm.forward(tokens, input_hook=input_hook, output_hook="hook_mlp_out",
                              output_edit=replace, record_internals=False)
        zeroed = lm.forward(tokens, input_hook=input_hook, output_hook="hook_mlp_out",
                            output_edit=lambda *a: replace(*a, zero=True),
                            record_internals=False)
        real = mask[:, 1:]
        for key, logits in (("clean", clean.logits), ("replaced", replaced.logits),
                            ("zero", zeroed.logits)):
            logp = torch.log_softmax(logits[:, :-1].float(), -1)
            ce[key] += float(-logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)[real].sum())
        targets += int(real.sum())
    variance = sq_tot - float(sum_y.pow(2).sum()) / n
    ce = {k: v / targets for k, v in ce.items()}
    return {"fvu": sq_err / variance, "l0": active / n, "never_fire": 1 - float(fired.float().mean()),
            "loss_recovered": (ce["zero"] - ce["replaced"]) / (ce["zero"] - ce["clean"]),
            "ce": ce, "tokens": n}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="corpora, runs and results")
    parser.add_argument("--sparsify-python", help="a Python with eai-sparsify installed")
    parser.add_argument("--tokens", type=int, help="training tokens (default: one pass over the "
                                                   "training lines)")
    parser.add_argument("--variant", action="append", default=[],
                        help="extra runs of ours, 'name:--flag value ...' (defaults otherwise)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from circuit_atlas.models import load_language_model
    from circuit_atlas.io.corpus import open_corpus
    from circuit_atlas.training.pipeline import held_out_batches

    args.work.mkdir(parents=True, exist_ok=True)
    train, held_out = write_corpora(args.work)
    lm = load_language_model("demo", device="cpu")
    batches = held_out_batches(lm, open_corpus(str(held_out)), 64, 10**6, 64, mode="documents")
    tokens = args.tokens or _one_pass_tokens(lm)
    runs = {"ours, defaults": train_ours(args.work, train, tokens, [], "ours")}
    for variant in args.variant:
        name, _, flags = variant.partition(":")
        runs[f"ours, {name}"] = train_ours(args.work, train, tokens, flags.split(), name)
    rows = []
    if args.sparsify_python:
        folder = train_sparsify(args.work, args.sparsify_python)
        timing = json.loads((folder / "timing.json").read_text())
        rows.append(("sparsify 1.3.3, defaults (run here)",
                     evaluate(lm, batches, *sparsify_coder(folder)) |
                     {"tokens_per_second": timing["tokens_per_second"]}))
    else:
        rows.append(("sparsify 1.3.3, defaults (issue 18's run)", ISSUE_SPARSIFY))
    for name, folder in runs.items():
        summary = json.loads((folder / "summary.json").read_text())
        trained = evaluate(lm, batches, *trained_coder(folder))
        trained["tokens_per_second"] = summary["tokens_per_second"]
        rows.append((f"{name}, as trained", trained))
        result = evaluate(lm, batches, *ours_coder(folder))
        result["tokens_per_second"] = summary["tokens_per_second"]
        result["export_gap"] = result["fvu"] / trained["fvu"] - 1
        rows.append((f"{name}, as exported", result))
    print(f"\ntraining tokens {tokens}, held-out tokens {rows[-1][1]['tokens']}")
    print("| trainer | FVU | L0 | never fire | loss recovered | tokens/s | exported vs trained |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows:
        gap = r.get("export_gap")
        print(f"| {name} | {r['fvu']:.5f} | {r['l0']:.2f} | {r['never_fire']:.1%} | "
              f"{r['loss_recovered']:.4f} | {r['tokens_per_second']:,.0f} | "
              f"{'' if gap is None else f'{gap:+.2%}'} |")
    (args.work / "results.json").write_text(json.dumps(dict(rows), indent=1))
    return 0


def _one_pass_tokens(lm) -> int:
    """Usable tokens (BOS excluded) of the training lines: one pass, like sparsify's side."""
    from circuit_atlas.demo import bundle, toyworld

    lines = toyworld.generate_corpus(bundle.demo_world(), TRAIN_LINES, seed=TRAIN_SEED)
    return sum(len(ids) - 1 for ids in lm.tokenizer(lines)["input_ids"])


if __name__ == "__main__":
    sys.exit(main())
