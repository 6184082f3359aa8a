"""`circuit-atlas train`: train transcoders (PLT, skip, CLT) for a model on a text corpus."""

from __future__ import annotations

import argparse
from pathlib import Path

from circuit_atlas.cli.common import check_output_dir, resolve_device
from circuit_atlas.errors import CircuitAtlasError

EXAMPLE = """\
examples:
  circuit-atlas train --model meta-llama/Llama-3.2-1B --corpus data/web.jsonl --kind clt \\
      --features 8192 --steps 20000 --batch-size 4096 --out runs/clt-8k
  circuit-atlas train --model ./my-model --corpus texts/ --kind skip --features 4096 \\
      --activation batchtopk --k 32 --cache runs/acts --out runs/skip-4k
  torchrun --nproc-per-node 4 -m circuit_atlas.cli.main train ...   (DDP over data)

Output: DIR/transcoders (native), DIR/circuit_tracer (circuit-tracer format), DIR/metrics.jsonl,
DIR/eval.json, DIR/checkpoint (re-running the same command resumes from it).
"""


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train", help="train transcoders for a model on a text corpus",
        description="Train per-layer, skip or cross-layer transcoders on a model's MLP "
                    "activations, export them for tracing and report held-out metrics.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_argument_group("what to train")
    what.add_argument("--model", required=True, help="hub id or local model directory")
    what.add_argument("--corpus", required=True,
                      help="folder of .txt files, a .txt file (blank-line separated) or .jsonl")
    what.add_argument("--text-field", default="text", help="JSONL field holding the text")
    what.add_argument("--kind", required=True, help="plt | skip | clt")
    what.add_argument("--features", required=True, type=int, help="features per layer")
    what.add_argument("--activation", default="jumprelu",
                      help="jumprelu (default) | relu | topk | batchtopk")
    what.add_argument("--k", type=int, help="active features per token for topk / batchtopk")
    what.add_argument("--input-hook", default="hook_resid_mid",
                      help="hook the encoders read (default hook_resid_mid)")
    what.add_argument("--output-hook", default="hook_mlp_out",
                      help="hook the decoders reconstruct (default hook_mlp_out)")
    what.add_argument("--out", required=True, type=Path, help="output directory")

    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--steps", type=int, default=1000)
    opt.add_argument("--batch-size", type=int, default=4096, help="tokens per step (global)")
    opt.add_argument("--lr", type=float, default=2e-4)
    opt.add_argument("--lr-warmup-steps", type=int, default=100)
    opt.add_argument("--lr-decay-fraction", type=float, default=0.2,
                     help="final fraction of steps with linear decay to 0")
    opt.add_argument("--sparsity-coefficient", type=float, default=1e-3)
    opt.add_argument("--sparsity-c", type=float, default=4.0, help="tanh scale c")
    opt.add_argument("--sparsity-warmup-steps", type=int, default=0)
    opt.add_argument("--preact-coefficient", type=float, default=3e-6)
    opt.add_argument("--auxk-coefficient", type=float, default=1 / 32)
    opt.add_argument("--dead-after-tokens", type=int, default=10_000_000)
    opt.add_argument("--grad-clip", type=float, default=1.0)
    opt.add_argument("--mixed-precision", default="auto", help="auto (bf16 on GPU) | bf16 | none")
    opt.add_argument("--seed", type=int, default=0)

    data = parser.add_argument_group("data")
    data.add_argument("--context-length", type=int, default=128)
    data.add_argument("--model-batch-size", type=int, default=8, help="windows per model pass")
    data.add_argument("--buffer-tokens", type=int, default=65536, help="shuffle buffer size")
    data.add_argument("--holdout-every", type=int, default=20,
                      help="hold out every N-th document for evaluation (default 20)")
    data.add_argument("--eval-windows", type=int, default=32, help="held-out windows evaluated")
    data.add_argument("--cache", type=Path, help="activation cache directory (built if absent)")
    data.add_argument("--cache-tokens", type=int, help="tokens to cache (default steps × batch)")

    run = parser.add_argument_group("run")
    run.add_argument("--log-every", type=int, default=50)
    run.add_argument("--checkpoint-every", type=int, default=500)
    run.add_argument("--eval-every", type=int, help="loss-recovered evaluation every N steps")
    run.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda if available)")
    run.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="model dtype")
    run.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    run.add_argument("--no-circuit-tracer", action="store_true",
                     help="export only the native format")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_train)
    return parser


def check_paths(args) -> None:
    """Everything the run will write, checked before the model loads: a file where the output
    folder (or one of its sub-folders) should be would otherwise only fail after training."""
    from circuit_atlas.training.checkpoint import CHECKPOINT_DIR
    from circuit_atlas.training.export import CIRCUIT_TRACER_DIR, NATIVE_DIR
    from circuit_atlas.training.trainer import LOG_FILE

    out = check_output_dir(args.out, "--out")
    for name, folder in ((NATIVE_DIR, True), (CIRCUIT_TRACER_DIR, True), (CHECKPOINT_DIR, True),
                         (LOG_FILE, False), ("eval.json", False)):
        path = out / name
        if path.exists() and path.is_dir() != folder:
            found, wanted = ("a folder", "file") if path.is_dir() else ("a file", "folder")
            raise CircuitAtlasError(
                f"--out {out}: {path} is {found}, but the run writes a {wanted} of that name; "
                "move it or choose another --out")
    if args.cache is not None:
        check_output_dir(args.cache, "--cache")
    if not Path(args.corpus).expanduser().exists():
        raise CircuitAtlasError(f"--corpus {args.corpus} does not exist")


def run_train(args) -> int:
    from circuit_atlas.training.config import OptimConfig
    from circuit_atlas.training.pipeline import TrainJob, check_job, run_training_job

    optim = OptimConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        lr_warmup_steps=args.lr_warmup_steps, lr_decay_fraction=args.lr_decay_fraction,
        sparsity_coefficient=args.sparsity_coefficient, sparsity_c=args.sparsity_c,
        sparsity_warmup_steps=args.sparsity_warmup_steps,
        preact_coefficient=args.preact_coefficient, auxk_coefficient=args.auxk_coefficient,
        dead_after_tokens=args.dead_after_tokens, grad_clip=args.grad_clip,
        mixed_precision=args.mixed_precision, log_every=args.log_every,
        checkpoint_every=args.checkpoint_every, seed=args.seed)
    job = TrainJob(
        model=args.model, corpus=args.corpus, kind=args.kind, n_features=args.features,
        out_dir=args.out, activation=args.activation, k=args.k, input_hook=args.input_hook,
        output_hook=args.output_hook, text_field=args.text_field,
        context_length=args.context_length, model_batch_size=args.model_batch_size,
        buffer_tokens=args.buffer_tokens, holdout_every=args.holdout_every,
        eval_windows=args.eval_windows, eval_every=args.eval_every, cache_dir=args.cache,
        cache_tokens=args.cache_tokens, device=resolve_device(args.device), dtype=args.dtype,
        resume=not args.no_resume, circuit_tracer=not args.no_circuit_tracer,
        progress=not args.quiet, optim=optim)
    check_job(job)
    check_paths(args)
    result = run_training_job(job)
    from circuit_atlas.io import distributed as dist

    if dist.is_main():
        if result.evaluation is not None:
            print(result.evaluation.table())
        for fmt, path in result.exported.items():
            print(f"wrote {fmt} transcoders to {path}")
    dist.shutdown()
    return 0
