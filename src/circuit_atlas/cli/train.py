"""`circuit-atlas train`: train transcoders (PLT, skip, CLT) for a model on a text corpus."""

from __future__ import annotations

import argparse
from pathlib import Path

from circuit_atlas.cli.common import check_at_least, check_output_dir, resolve_device
from circuit_atlas.cli.eval_transcoders import read_model_config
from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.training.selection import check_layers

EXAMPLE = """\
examples:
  circuit-atlas train --model meta-llama/Llama-3.2-1B --corpus data/web.jsonl --kind clt \\
      --features 8192 --steps 20000 --batch-size 4096 --out runs/clt-8k
  circuit-atlas train --model demo --corpus lines.txt --kind plt --layers 2 --features 1024 \\
      --activation topk --k 8 --tokens 3000000 --out runs/demo-l2
  circuit-atlas train --model ./my-model --corpus texts/ --kind skip --features 4096 \\
      --activation batchtopk --k 32 --layers 0-3,8 --seeds 0,1,2 --cache runs/acts --out runs/skip
  circuit-atlas train --model M --corpus more.jsonl --init-from runs/skip/seed-1/transcoders \\
      --kind skip --activation batchtopk --k 32 --layers 4-7 --out runs/skip-complete
  torchrun --nproc-per-node 4 -m circuit_atlas.cli.main train ...   (DDP over data)

Defaults were chosen from measurements (docs/training.md): the batch size leaves at least
5000 steps of the token budget (256..4096 tokens), the learning rate falls with the square root
of --features, warm-up is 5 % of the steps, features that have not fired for 10 % of the budget
count as dead and get the AuxK loss (TopK / BatchTopK), and the layout of windows is chosen per
model and corpus (--layout auto).

Output: DIR/transcoders (native), DIR/circuit_tracer (circuit-tracer format), DIR/metrics.jsonl,
DIR/eval.json, DIR/summary.json, DIR/checkpoint (re-running the same command resumes from it).
After training it prints the held-out metrics and the trained-vs-exported FVU check.
"""


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train", help="train transcoders for a model on a text corpus",
        description="Train per-layer, skip or cross-layer transcoders on a model's MLP "
                    "activations, export them for tracing and report held-out metrics.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_argument_group("what to train")
    what.add_argument("--model", required=True, help="hub id, local model directory, or 'demo'")
    what.add_argument("--corpus", required=True,
                      help="folder of .txt files, a .txt file (blank-line separated) or .jsonl")
    what.add_argument("--text-field", default="text", help="JSONL field holding the text")
    what.add_argument("--kind", required=True, help="plt | skip | clt")
    what.add_argument("--features", type=int,
                      help="features per layer (default with --init-from: the set's)")
    what.add_argument("--activation", default="jumprelu",
                      help="jumprelu (default) | relu | topk | batchtopk")
    what.add_argument("--k", type=int, help="active features per token for topk / batchtopk")
    what.add_argument("--layers", default="",
                      help="layers to train, e.g. 2,5-7 (default: all; plt and skip only)")
    what.add_argument("--input-hook", default="hook_resid_mid",
                      help="hook point the encoders read: hook_resid_mid (default), "
                           "ln2.hook_normalized, mlp.hook_in; blocks.<layers>.<name> also "
                           "selects layers")
    what.add_argument("--output-hook", default="hook_mlp_out",
                      help="hook point the decoders reconstruct: hook_mlp_out (default), "
                           "mlp.hook_out")
    what.add_argument("--init-from", help="start from this transcoder set (fine-tune it, "
                                          "retrain --layers of it, or complete a partial set)")
    what.add_argument("--out", required=True, type=Path, help="output directory")

    opt = parser.add_argument_group("optimisation")
    length = opt.add_mutually_exclusive_group()
    length.add_argument("--tokens", type=int,
                        help="token budget (default 4,096,000; steps = tokens / batch size)")
    length.add_argument("--steps", type=int, help="optimiser steps instead of --tokens")
    opt.add_argument("--batch-size", type=int,
                     help="tokens per step, global (default: from the budget, the largest "
                          "power of two in 256..4096 that leaves 5000 steps; 4096 with --steps)")
    opt.add_argument("--grad-accumulation", type=int, default=1,
                     help="split each step's batch into this many micro-batches (memory)")
    opt.add_argument("--lr", type=float, help="Adam learning rate (default: 2e-4·√(16384 / "
                                              "features))")
    opt.add_argument("--lr-warmup-steps", type=int, help="default: 5 %% of the steps (≤ 1000)")
    opt.add_argument("--lr-decay-fraction", type=float, default=0.2,
                     help="final fraction of steps with linear decay to 0")
    opt.add_argument("--normalize-decoder", dest="normalize_decoder", action="store_true",
                     default=None, help="keep decoder rows at unit norm (default: off; "
                                        "measured in docs/training.md)")
    opt.add_argument("--no-normalize-decoder", dest="normalize_decoder", action="store_false")
    opt.add_argument("--sparsity-coefficient", type=float, default=1e-3)
    opt.add_argument("--sparsity-c", type=float, default=4.0, help="tanh scale c")
    opt.add_argument("--sparsity-warmup-steps", type=int, default=0)
    opt.add_argument("--preact-coefficient", type=float, default=3e-6)
    opt.add_argument("--auxk-coefficient", type=float, default=1 / 32)
    opt.add_argument("--dead-after-tokens", type=int,
                     help="a feature is dead after this many tokens without firing (default: "
                          "10 %% of the token budget, at most 10M)")
    opt.add_argument("--kl-coefficient", type=float, default=0.0,
                     help="weight of the end-to-end loss: KL of the model's next-token "
                          "distribution with the transcoders in place (default 0: off)")
    opt.add_argument("--kl-windows", type=int, default=8, help="windows per end-to-end step")
    opt.add_argument("--grad-clip", type=float, default=1.0)
    opt.add_argument("--mixed-precision", default="auto", help="auto (bf16 on GPU) | bf16 | none")
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--seeds", help="several seeds in one run, e.g. 0,1,2: one model pass "
                                     "feeds them all; each gets DIR/seed-<s>/")

    data = parser.add_argument_group("data")
    data.add_argument("--context-length", type=int,
                      help="tokens per window (default 128, or the model's positions if fewer)")
    data.add_argument("--layout", default="auto", choices=("auto", "packed", "documents"),
                      help="packed: documents concatenated into full windows; documents: one "
                           "document per window, padded (padding never trained on or scored); "
                           "auto (default): documents unless the model predicts packed text "
                           "as well")
    data.add_argument("--model-batch-size", type=int, default=8,
                      help="windows per model pass (in tokens: this × context length)")
    data.add_argument("--buffer-tokens", type=int, default=65536, help="shuffle buffer size")
    data.add_argument("--holdout-every", type=int, default=20,
                      help="hold out every N-th document for evaluation (default 20)")
    data.add_argument("--eval-windows", type=int, default=32, help="held-out windows evaluated")
    data.add_argument("--cache", type=Path, help="activation cache directory (built if absent)")
    data.add_argument("--cache-tokens", type=int, help="tokens to cache (default steps × batch)")

    run = parser.add_argument_group("run")
    run.add_argument("--log-every", type=int, default=50)
    run.add_argument("--checkpoint-every", type=int, default=500)
    run.add_argument("--eval-every", type=int, help="held-out evaluation every N steps")
    run.add_argument("--keep-best", choices=("fvu", "loss_recovered"),
                     help="export the state with the best held-out value (needs --eval-every)")
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
    from circuit_atlas.training.best import BEST_DIR
    from circuit_atlas.training.checkpoint import CHECKPOINT_DIR
    from circuit_atlas.training.export import CIRCUIT_TRACER_DIR, NATIVE_DIR
    from circuit_atlas.training.pipeline import SUMMARY_FILE
    from circuit_atlas.training.trainer import LOG_FILE

    out = check_output_dir(args.out, "--out")
    for name, folder in ((NATIVE_DIR, True), (CIRCUIT_TRACER_DIR, True), (CHECKPOINT_DIR, True),
                         (BEST_DIR, True), (LOG_FILE, False), ("eval.json", False),
                         (SUMMARY_FILE, False)):
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


def check_model_shape(args, layers: list[int]) -> None:
    """--layers and --context-length against the model's config, read without its weights (a
    large model would otherwise load for minutes before the mistake shows)."""
    config = read_model_config(args.model)
    if config is None:
        return  # the model load that follows says why it cannot be read
    n_layers = getattr(config, "num_hidden_layers", None)
    if isinstance(n_layers, int) and layers:
        check_layers(layers, n_layers, args.model)
    limit = getattr(config, "max_position_embeddings", None)
    if args.context_length is not None and isinstance(limit, int) and args.context_length > limit:
        raise CircuitAtlasError(f"--context-length {args.context_length} exceeds the {limit} "
                                f"positions of model {args.model}")


def run_train(args) -> int:
    from circuit_atlas.training.config import OptimConfig, budget
    from circuit_atlas.training.pipeline import TrainJob, check_job, run_training_job
    from circuit_atlas.training.selection import merge_layer_choices, parse_hooks, parse_layers

    layers = parse_layers(args.layers) if args.layers else []
    seeds = parse_layers(args.seeds, flag="--seeds") if args.seeds else []
    for flag, value in (("--tokens", args.tokens), ("--steps", args.steps),
                        ("--batch-size", args.batch_size)):
        if value is not None:
            check_at_least(value, 1, flag)
    steps, batch_size = budget(args.tokens, args.batch_size, args.steps)
    optim = OptimConfig(
        steps=steps, batch_size=batch_size, lr=args.lr,
        lr_warmup_steps=args.lr_warmup_steps, lr_decay_fraction=args.lr_decay_fraction,
        grad_accumulation=args.grad_accumulation,
        sparsity_coefficient=args.sparsity_coefficient, sparsity_c=args.sparsity_c,
        sparsity_warmup_steps=args.sparsity_warmup_steps,
        preact_coefficient=args.preact_coefficient, auxk_coefficient=args.auxk_coefficient,
        dead_after_tokens=args.dead_after_tokens, kl_coefficient=args.kl_coefficient,
        grad_clip=args.grad_clip, mixed_precision=args.mixed_precision,
        log_every=args.log_every, checkpoint_every=args.checkpoint_every,
        seed=seeds[0] if seeds else args.seed)
    job = TrainJob(
        model=args.model, corpus=args.corpus, kind=args.kind, n_features=args.features,
        out_dir=args.out, activation=args.activation, k=args.k, input_hook=args.input_hook,
        output_hook=args.output_hook, layers=layers, text_field=args.text_field,
        context_length=args.context_length, windows=args.layout,
        model_batch_size=args.model_batch_size, buffer_tokens=args.buffer_tokens,
        holdout_every=args.holdout_every, eval_windows=args.eval_windows,
        eval_every=args.eval_every, keep_best=args.keep_best, seeds=seeds,
        init_from=args.init_from, kl_windows=args.kl_windows,
        normalize_decoder=args.normalize_decoder, cache_dir=args.cache,
        cache_tokens=args.cache_tokens, device=resolve_device(args.device), dtype=args.dtype,
        resume=not args.no_resume, circuit_tracer=not args.no_circuit_tracer,
        progress=not args.quiet, optim=optim)
    check_job(job)
    check_paths(args)
    hooks = parse_hooks(args.input_hook, args.output_hook)
    check_model_shape(args, merge_layer_choices(layers, hooks.layers))
    result = run_training_job(job)
    from circuit_atlas.io import distributed as dist

    if dist.is_main():
        print(report_text(result))
    dist.shutdown()
    return 0


def report_text(result) -> str:
    """What the run printed at its end: held-out table, export check, throughput, outputs."""
    lines = [f"windows: {result.windows.mode} ({result.windows.reason}); "
             f"{result.context_length}-token windows; layers "
             f"{','.join(map(str, result.layers))}"]
    for seed in result.seeds:
        prefix = f"seed {seed.seed}: " if len(result.seeds) > 1 else ""
        if seed.evaluation is not None:
            lines.append(f"{prefix}held-out evaluation ({seed.out_dir / 'eval.json'})")
            lines.append(seed.evaluation.table())
        if seed.fidelity is not None:
            verdict = "ok" if seed.fidelity.ok else "WORSE THAN TRAINED"
            lines.append(f"{prefix}export check ({verdict}): {seed.fidelity.summary()}")
        if seed.tokens_per_second:
            lines.append(f"{prefix}training throughput: {seed.tokens_per_second:,.0f} tokens/s "
                         "(model passes included)")
        if seed.best_step is not None:
            lines.append(f"{prefix}exported the best state (step {seed.best_step})")
        for fmt, path in seed.exported.items():
            lines.append(f"{prefix}wrote {fmt} transcoders to {path}")
    lines.extend(f"note: {note}" for note in result.notes)
    return "\n".join(lines)
