"""Attribution time and peak memory versus prompt length, for PLT and CLT transcoders.

Each configuration runs in a fresh subprocess so its peak memory is its own. On CPU the figure is
the growth of the process's resident-set high-water mark during `attribute` (the mark is reset
just before the call through /proc/self/clear_refs, so setting up the model does not count); on
CUDA it is `torch.cuda.max_memory_allocated` growth. "CPU s" is the process's CPU time during
the call: on a shared machine it moves far less with other people's load than wall time. The model is a seeded random model of the
chosen shape with random transcoders whose encoder biases are shifted so that about `--l0`
features fire per layer and position, like trained transcoders.

Shapes (`--shape`; every field can still be overridden by its own flag):

    default        4 layers, d_model 128, 4/2 heads, 1024 features/layer, L0 32, 1024 feature
                   nodes: the quick table of the README
    cpu            4 layers, d_model 2048, 16/8 heads, 32768 features/layer, L0 128, 4096
                   feature nodes, batch 64: long prompts at a realistic density, on one CPU core
    llama-3.2-1b   16 layers, d_model 2048, 32/8 heads of 64, CLT of 32768 features/layer, L0 100,
                   8192 feature nodes, bfloat16
    gemma-2-2b     26 layers, d_model 2304, 8/4 heads of 256, PLT of 16384 features/layer, L0 70,
                   attention and final soft-caps, sliding window 4096 on alternate layers,
                   8192 feature nodes, bfloat16

    python benchmarks/attribution.py                              # default table, 16..1024 tokens
    python benchmarks/attribution.py --shape cpu --lengths 1024 --kinds clt
    python benchmarks/attribution.py --shape llama-3.2-1b --lengths 1024 4096 8192 --estimate-only
    python benchmarks/attribution.py --shape cpu --engine dense   # the all-columns engine

`--estimate-only` prints the memory plan of `attribute` for the shape (no model is built: the
active-feature count is taken as L0 x layers x positions), which is how the README's figures for
GPU shapes were obtained where no GPU was available.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

SHAPES: dict[str, dict] = {
    "default": dict(family="llama", layers=4, d_model=128, heads=4, kv_heads=2, head_dim=None,
                    features=1024, l0=32, max_feature_nodes=1024, batch_size=64, dtype="float32",
                    kinds=["plt", "clt"], lengths=[16, 64, 256, 1024]),
    "cpu": dict(family="llama", layers=4, d_model=2048, heads=16, kv_heads=8, head_dim=None,
                features=32768, l0=128, max_feature_nodes=4096, batch_size=64, dtype="float32",
                kinds=["plt", "clt"], lengths=[1024, 2048, 4096]),
    "llama-3.2-1b": dict(family="llama", layers=16, d_model=2048, heads=32, kv_heads=8, head_dim=64,
                         features=32768, l0=100, max_feature_nodes=8192, batch_size=256,
                         dtype="bfloat16", kinds=["clt"], lengths=[1024, 4096, 8192],
                         d_mlp=8192, vocab=128256),
    "gemma-2-2b": dict(family="gemma2", layers=26, d_model=2304, heads=8, kv_heads=4, head_dim=256,
                       features=16384, l0=70, max_feature_nodes=8192, batch_size=256,
                       dtype="bfloat16", kinds=["plt"], lengths=[1024, 4096, 8192],
                       d_mlp=9216, vocab=256000, sliding_window=4096),
}


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark of this process (Linux); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build_model(args, max_positions: int):
    """A seeded random model of the shape: `tiny_language_model` for the small shapes, a config of
    the real architecture's layout (heads, head size, soft-caps, windows) for the named ones."""
    import torch
    import transformers as T

    from circuit_atlas.models import LanguageModel
    from circuit_atlas.models.tiny import _reinit, tiny_language_model, tiny_tokenizer

    if args.head_dim is None and args.family == "llama" and args.d_mlp is None:
        return tiny_language_model("llama", seed=0, n_layers=args.layers, d_model=args.d_model,
                                   n_heads=args.heads, n_kv_heads=args.kv_heads, max_positions=max_positions)
    tokenizer = tiny_tokenizer()
    head_dim = args.head_dim or args.d_model // args.heads
    common = dict(vocab_size=len(tokenizer), hidden_size=args.d_model, num_hidden_layers=args.layers,
                  num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, head_dim=head_dim,
                  intermediate_size=args.d_mlp or 4 * args.d_model, max_position_embeddings=max_positions,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if args.family == "gemma2":
        window = args.sliding_window or 4096
        config = T.Gemma2Config(**common, query_pre_attn_scalar=head_dim, sliding_window=window,
                                layer_types=["sliding_attention" if i % 2 == 0 else "full_attention"
                                             for i in range(args.layers)],
                                attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                                hidden_activation="gelu_pytorch_tanh")
    else:
        config = T.LlamaConfig(**common, rms_norm_eps=1e-5, tie_word_embeddings=False,
                               rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    hf_model = T.AutoModelForCausalLM.from_config(config)
    _reinit(hf_model, torch.Generator().manual_seed(0))
    return LanguageModel.from_hf(hf_model, tokenizer, name=f"random-{args.shape}")


def sparsify(model, l0: int) -> None:
    """Shift encoder biases so about `l0` features per layer and position are active.

    Random encoders fire on about half their features; trained transcoders fire on a few dozen.
    The shift is the pre-activation quantile on a calibration prompt of random tokens (the
    benchmark's own distribution). Only the model's forward runs here, no transcoder decode:
    before the shift half the features are active and a reconstruction would not fit.
    """
    import torch

    tc = model.transcoders
    calibration = torch.randint(4, model.lm.vocab_size, (256,), generator=torch.Generator().manual_seed(99))
    calibration[0] = model.tokenizer.bos_token_id
    with torch.no_grad():
        record = model.lm.forward(calibration.to(model.lm.device)[None], input_hook=tc.input_hook,
                                  output_hook=tc.output_hook, record_internals=False, compute_logits=False)
    keep = 1.0 - l0 / tc.n_features
    for layer in range(tc.n_layers):
        h = tc.pre_activation(layer, record.inputs[layer][0, 1:]).float()
        sample = h.flatten()
        if sample.numel() > 2**24:  # torch.quantile's input limit
            sample = sample[torch.randperm(sample.numel(), generator=torch.Generator().manual_seed(layer))[: 2**24]]
        tc.encoder_bias(layer).sub_(torch.quantile(sample, keep).to(tc.encoder_bias(layer).dtype))


def attribute_kwargs(args) -> dict:
    kwargs = dict(max_feature_nodes=args.max_feature_nodes, batch_size=args.batch_size, progress=False)
    if args.engine is not None:
        kwargs["engine"] = args.engine
    if args.memory_limit is not None:
        kwargs["memory_limit"] = int(args.memory_limit * 2**30)
    return kwargs


def measure(kind: str, length: int, args) -> dict:
    import torch

    import circuit_atlas
    from circuit_atlas.transcoders.random import random_transcoders

    torch.manual_seed(0)
    device = torch.device(args.device)
    lm = build_model(args, max_positions=max(1024, length))
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
        reset_peak_rss()
        base = current_rss_bytes()
    start, cpu_start = time.perf_counter(), time.process_time()
    graph = circuit_atlas.attribute(model, tokens, **attribute_kwargs(args))
    cpu_seconds = time.process_time() - cpu_start
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = peak_rss_bytes() - base
    seconds = time.perf_counter() - start
    n_active = int(graph.active_features.shape[0])
    rows = int(graph.selected_features.shape[0] + len(graph.logit_tokens))
    estimate = graph.settings.get("memory_estimate_bytes")
    return {
        "kind": kind,
        "tokens": length,
        "active": n_active,
        "l0": round(n_active / max(1, args.layers * (length - 1)), 1),
        "rows": rows,
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu_seconds, 3),
        "peak_mib": round(max(peak, 0) / 2**20, 1),
        "estimate_mib": None if estimate is None else round(estimate / 2**20, 1),
        "rows_per_s": round(rows / seconds, 1),
        "filled_columns": graph.settings.get("filled_columns"),
        "rows_per_layer": torch.bincount(graph.active_features[graph.selected_features, 0],
                                         minlength=args.layers).tolist(),
    }


def estimate_only(kind: str, length: int, args) -> dict:
    """The memory plan for the shape without building anything (active features = L0 per layer
    and position; every position but the first)."""
    import torch

    from circuit_atlas.attribution.memory import SWEEP_BYTES, AttentionShape, plan_compact_memory
    from circuit_atlas.models.language_model import resolve_dtype

    n_active = args.l0 * args.layers * (length - 1)
    head_dim = args.head_dim or args.d_model // args.heads
    plan = plan_compact_memory(
        n_layers=args.layers, n_positions=length, d_model=args.d_model,
        attention=AttentionShape(args.heads, args.kv_heads, head_dim),
        n_active=n_active, n_decoder_slots=int(n_active * _mean_targets(kind, args.layers) * 1.2),
        n_selected=min(args.max_feature_nodes, n_active), n_logits=10, batch_size=args.batch_size,
        dtype=resolve_dtype(args.dtype) or torch.float32, row_device_is_host=args.device != "cpu",
        sweep_budget=SWEEP_BYTES["cpu" if args.device == "cpu" else "cuda"], d_mlp=args.d_mlp,
        n_features=args.features,
        frozen_pass=False,  # these families and skip-free transcoders take every hop in closed form
    )
    weights = _weight_bytes(kind, args)
    return {"kind": kind, "tokens": length, "active": n_active, "plan": plan.parts(),
            "device_total_gib": round((plan.device_total + weights) / 2**30, 2),
            "attribution_gib": round(plan.device_total / 2**30, 2),
            "weights_gib": round(weights / 2**30, 2),
            "host_gib": round(plan.host_total / 2**30, 2)}


def _mean_targets(kind: str, n_layers: int) -> float:
    return 1.0 if kind == "plt" else (n_layers + 1) / 2


def _weight_bytes(kind: str, args) -> int:
    """Model and transcoder weights in the compute dtype (what sits on the device besides attribution)."""
    item = 2 if args.dtype in ("bfloat16", "float16") else 4
    d, layers = args.d_model, args.layers
    head_dim = args.head_dim or d // args.heads
    attention = d * head_dim * (2 * args.heads + 2 * args.kv_heads)
    mlp = 3 * d * (args.d_mlp or 4 * d)
    model = layers * (attention + mlp) + 2 * (args.vocab or 0) * d
    targets = layers if kind == "plt" else layers * (layers + 1) // 2
    transcoders = args.features * d * (layers + targets)
    return (model + transcoders) * item


def describe_device(name: str) -> str:
    import torch

    if name.startswith("cuda") and torch.cuda.is_available():
        return f"{name} ({torch.cuda.get_device_name(torch.device(name))}, torch {torch.__version__})"
    return f"{name} (torch {torch.__version__}, {torch.get_num_threads()} threads)"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="default")
    parser.add_argument("--lengths", type=int, nargs="+")
    parser.add_argument("--kinds", nargs="+", choices=["plt", "clt"])
    parser.add_argument("--layers", type=int)
    parser.add_argument("--d-model", type=int)
    parser.add_argument("--heads", type=int)
    parser.add_argument("--kv-heads", type=int)
    parser.add_argument("--head-dim", type=int)
    parser.add_argument("--features", type=int)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--l0", type=int, help="active features per layer and position")
    parser.add_argument("--max-feature-nodes", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", help="model and transcoder dtype (float32, bfloat16, ...)")
    parser.add_argument("--engine", choices=["compact", "dense"],
                        help="attribution engine (default: attribute()'s own default)")
    parser.add_argument("--memory-limit", type=float, metavar="GIB",
                        help="memory the run may plan for (default: what the device has available); a "
                             "larger value runs a configuration whose plan exceeds the free memory")
    parser.add_argument("--estimate-only", action="store_true",
                        help="print the memory plan of each configuration without running it")
    parser.add_argument("--one", nargs=2, metavar=("KIND", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    preset = SHAPES[args.shape]
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for key in ("d_mlp", "vocab", "sliding_window"):
        if not hasattr(args, key):
            setattr(args, key, None)
    return args


def main() -> None:
    args = parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args)))
        return
    print(f"shape {args.shape}: device {describe_device(args.device)}, dtype {args.dtype}, {args.layers} layers, "
          f"d_model {args.d_model}, {args.heads}/{args.kv_heads} heads, {args.features} features/layer, "
          f"L0 {args.l0}, max_feature_nodes {args.max_feature_nodes}, batch {args.batch_size}, "
          f"engine {args.engine or 'default'}")
    if args.estimate_only:
        for kind in args.kinds:
            for length in args.lengths:
                print(json.dumps(estimate_only(kind, length, args)))
        return
    print(f"{'kind':>4} {'tokens':>6} {'active':>8} {'L0':>6} {'rows':>6} {'seconds':>8} {'CPU s':>8} {'rows/s':>8} "
          f"{'peak MiB':>9} {'est. MiB':>9} {'filled':>6}")
    passthrough = list(sys.argv[1:])
    for kind in args.kinds:
        for length in args.lengths:
            out = subprocess.run(
                [sys.executable, __file__, *passthrough, "--one", kind, str(length)],
                capture_output=True, text=True, check=False,
            )
            if out.returncode != 0:
                lines = out.stderr.strip().splitlines()
                print(f"{kind:>4} {length:>6} failed: {lines[-1] if lines else f'exit code {out.returncode}'}",
                      flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            estimate = "-" if r["estimate_mib"] is None else f"{r['estimate_mib']:.1f}"
            filled = "-" if r["filled_columns"] is None else str(r["filled_columns"])
            print(f"{r['kind']:>4} {r['tokens']:>6} {r['active']:>8} {r['l0']:>6} {r['rows']:>6} "
                  f"{r['seconds']:>8.2f} {r['cpu_seconds']:>8.2f} {r['rows_per_s']:>8.1f} {r['peak_mib']:>9.1f} "
                  f"{estimate:>9} {filled:>6}", flush=True)


if __name__ == "__main__":
    main()
