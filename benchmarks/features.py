"""Feature-store build throughput (tokens/s) and peak memory, on tiny models and the demo model.

Each configuration runs in a fresh subprocess so its peak memory is its own: on CPU the figure is
the growth of the process's peak resident set during the build (ru_maxrss after minus RSS
before); on CUDA it is `torch.cuda.max_memory_allocated` (model and transcoders included). The
corpus is random text over the tiny tokenizer's words (or the demo tokenizer's vocabulary), the
transcoders are seeded random sets, and the build writes a real store into a temporary folder
(SQLite writes included). The bundled demo model is measured when `circuit_atlas.demo` ships one.

    python benchmarks/features.py                          # default table
    python benchmarks/features.py --tokens 20000 --device cuda --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time

CONFIGS = {
    # name: (layers, d_model, features per layer, kind)
    "tiny-plt": (2, 64, 512, "plt"),
    "tiny-clt": (2, 64, 512, "clt"),
    "small-plt": (4, 128, 4096, "plt"),
    "small-clt": (4, 128, 4096, "clt"),
}


def current_rss_bytes() -> int:
    import os

    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def _texts(words: list[str], n_tokens: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts, total = [], 0
    while total < n_tokens:
        n = rng.randint(20, 300)
        texts.append(" ".join(rng.choice(words) for _ in range(n)))
        total += n
    return texts


def _model(name: str, device: str):
    import circuit_atlas
    from circuit_atlas.transcoders.random import random_transcoders

    if name == "demo":
        from circuit_atlas.demo.bundle import demo_model_path
        from circuit_atlas.models import load_language_model

        lm = load_language_model(str(demo_model_path()))
        words = sorted({w.lstrip("\u2581") for w in lm.tokenizer.get_vocab()} - {""})
        words = [w for w in words if w.isalpha()]
        layers, d_model, features, kind = lm.n_layers, lm.d_model, 8 * lm.d_model, "clt"
    else:
        from circuit_atlas.models.tiny import WORDS, tiny_language_model

        layers, d_model, features, kind = CONFIGS[name]
        lm = tiny_language_model("llama", n_layers=layers, d_model=d_model, seed=0, max_positions=256)
        words = list(WORDS)
    tc = random_transcoders(kind, n_layers=layers, d_model=d_model, n_features=features, seed=1,
                            input_hook="hook_resid_mid", output_hook="hook_mlp_out")
    return circuit_atlas.load(lm, tc, device=device), words, kind, features


def set_sparsity(model, l0: int) -> None:
    """Lower the encoder biases so about `l0` features per layer fire on a token.

    Seeded random encoders fire on roughly half their features, trained transcoders on a few
    dozen; the work per token (and the churn of example lists) grows with that number. The shift
    is a quantile of the pre-activations over one random prompt.
    """
    import torch

    if l0 <= 0:
        return
    ids = torch.randint(4, model.lm.vocab_size, (1, 96), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        record = model.lm.forward(ids.to(model.lm.device), input_hook=model.input_hook,
                                  output_hook=model.output_hook, record_internals=False,
                                  compute_logits=False)
        tc = model.transcoders
        for layer in range(tc.n_layers):
            pre = tc.pre_activation(layer, record.inputs[layer][0, 1:]).float()
            cut = torch.quantile(pre.flatten(), 1.0 - min(l0, tc.n_features) / tc.n_features)
            tc.encoder_bias(layer).sub_(cut.to(tc.encoder_bias(layer).dtype))


def measure(name: str, args) -> dict:
    import torch

    from circuit_atlas.features import BuildSettings, build_feature_store

    torch.manual_seed(0)
    model, words, kind, features = _model(name, args.device)
    set_sparsity(model, args.l0)
    texts = _texts(words, args.tokens)
    context_len = min(args.context_len, model.lm.max_positions or args.context_len)
    settings = BuildSettings(context_len=context_len, max_tokens=args.tokens)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = current_rss_bytes()
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        report = build_feature_store(model, texts, out, settings, batch_size=args.batch_size,
                                     commit_interval=60.0, progress=False)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    if args.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {
        "model": name, "kind": kind, "context": context_len, "layers": model.n_layers, "d_model": model.d_model,
        "features": features, "tokens": report.tokens, "seconds": round(seconds, 2),
        "tok_s": round(report.tokens / seconds, 1), "peak_mib": round(max(peak, 0) / 2**20, 1),
    }


def _demo_available() -> bool:
    try:
        from circuit_atlas.demo.bundle import demo_model_path

        demo_model_path()
        return True
    except Exception:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(CONFIGS) + ["demo"],
                        help=f"configurations: {', '.join(CONFIGS)}, demo")
    parser.add_argument("--tokens", type=int, default=20000, help="token budget per build")
    parser.add_argument("--context-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--l0", type=int, default=64,
                        help="active features per layer and token (0: the random sets' own, ~half)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args)))
        return
    passthrough = [a for a in sys.argv[1:]]
    print(f"device {args.device}, {args.tokens} tokens per build, batch {args.batch_size}, "
          f"L0 {args.l0 or 'dense'}")
    print(f"{'model':>10} {'kind':>4} {'layers':>6} {'d_model':>7} {'features':>8} {'context':>7} "
          f"{'tokens':>7} {'seconds':>8} {'tok/s':>9} {'peak MiB':>9}")
    for name in args.models:
        if name == "demo" and not _demo_available():
            print(f"{'demo':>10} skipped: circuit_atlas.demo ships no trained model in this checkout")
            continue
        out = subprocess.run([sys.executable, __file__, *passthrough, "--one", name],
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "?"
            print(f"{name:>10} failed: {last}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['model']:>10} {r['kind']:>4} {r['layers']:>6} {r['d_model']:>7} {r['features']:>8} "
              f"{r['context']:>7} {r['tokens']:>7} {r['seconds']:>8.2f} {r['tok_s']:>9.1f} {r['peak_mib']:>9.1f}")


if __name__ == "__main__":
    main()
