"""Attribution time and peak memory versus prompt length, for PLT and CLT transcoders.

Each configuration runs in a fresh subprocess so its peak memory is its own: on CPU the figure is
the growth of the process's peak resident set during `attribute` (ru_maxrss after minus RSS
before); on CUDA it is `torch.cuda.max_memory_allocated`. The model is a seeded tiny Llama
(`--layers`, `--d-model`) with random transcoders, sparse enough that a 1024-token prompt has a few
thousand active features per layer, and `max_feature_nodes` is fixed so the growth with prompt
length shows the engine's own scaling.

    python benchmarks/attribution.py                      # full table (16..1024 tokens)
    python benchmarks/attribution.py --lengths 16 64 --kinds plt
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")


def sparsify(model, l0: int) -> None:
    """Shift encoder biases so about `l0` features per layer and position are active.

    Random encoders fire on about half their features; trained transcoders fire on a few dozen.
    The bias shift is the pre-activation quantile measured on a calibration prompt.
    """
    import torch

    calibration = torch.randint(4, model.lm.vocab_size, (64,), generator=torch.Generator().manual_seed(99))
    run = model.run(calibration)
    tc = model.transcoders
    keep = 1.0 - l0 / tc.n_features
    for layer in range(tc.n_layers):
        h = tc.pre_activation(layer, run.mlp_inputs[layer, 1:])
        tc.encoder_bias(layer).sub_(torch.quantile(h.flatten().float(), keep).to(h.dtype))


def measure(kind: str, length: int, args) -> dict:
    import torch

    import circuit_atlas
    from circuit_atlas.models.tiny import tiny_language_model
    from circuit_atlas.transcoders.random import random_transcoders

    torch.manual_seed(0)
    device = torch.device(args.device)
    lm = tiny_language_model("llama", seed=0, n_layers=args.layers, d_model=args.d_model,
                             n_heads=args.heads, n_kv_heads=args.kv_heads, max_positions=max(1024, length))
    tc = random_transcoders(
        kind, n_layers=args.layers, d_model=args.d_model, n_features=args.features, seed=1,
        input_hook="hook_resid_mid", output_hook="hook_mlp_out", scale=args.scale,
    )
    model = circuit_atlas.load(lm, tc, device=device, dtype=args.dtype)
    sparsify(model, args.l0)
    tokens = torch.randint(4, lm.vocab_size, (length,), generator=torch.Generator().manual_seed(length))
    tokens[0] = lm.tokenizer.bos_token_id
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = current_rss_bytes()
    start = time.perf_counter()
    graph = circuit_atlas.attribute(
        model, tokens, max_feature_nodes=args.max_feature_nodes, batch_size=args.batch_size, progress=False
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    seconds = time.perf_counter() - start
    return {
        "kind": kind,
        "tokens": length,
        "active": int(graph.active_features.shape[0]),
        "rows": int(graph.selected_features.shape[0] + len(graph.logit_tokens)),
        "seconds": round(seconds, 3),
        "peak_mib": round(max(peak, 0) / 2**20, 1),
        "rows_per_s": round((graph.selected_features.shape[0] + len(graph.logit_tokens)) / seconds, 1),
    }


def describe_device(name: str) -> str:
    import torch

    if name.startswith("cuda") and torch.cuda.is_available():
        return f"{name} ({torch.cuda.get_device_name(torch.device(name))}, torch {torch.__version__})"
    return f"{name} (torch {torch.__version__}, {torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--kinds", nargs="+", default=["plt", "clt"])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--features", type=int, default=1024)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--l0", type=int, default=32, help="active features per layer and position")
    parser.add_argument("--max-feature-nodes", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="model and transcoder dtype (float32, bfloat16, ...)")
    parser.add_argument("--one", nargs=2, metavar=("KIND", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args)))
        return
    passthrough = [a for a in sys.argv[1:]]
    print(f"device {describe_device(args.device)}, dtype {args.dtype}, {args.layers} layers, d_model "
          f"{args.d_model}, {args.features} features/layer, L0 {args.l0}, max_feature_nodes "
          f"{args.max_feature_nodes}, batch {args.batch_size}")
    print(f"{'kind':>4} {'tokens':>6} {'active':>8} {'rows':>6} {'seconds':>8} {'rows/s':>8} {'peak MiB':>9}")
    for kind in args.kinds:
        for length in args.lengths:
            out = subprocess.run(
                [sys.executable, __file__, *passthrough, "--one", kind, str(length)],
                capture_output=True, text=True, check=False,
            )
            if out.returncode != 0:
                print(f"{kind:>4} {length:>6} failed: {out.stderr.strip().splitlines()[-1] if out.stderr else '?'}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{r['kind']:>4} {r['tokens']:>6} {r['active']:>8} {r['rows']:>6} {r['seconds']:>8.2f} {r['rows_per_s']:>8.1f} {r['peak_mib']:>9.1f}")


if __name__ == "__main__":
    main()
