"""`circuit-atlas steer`: intervene on features and print top tokens and continuations before/after."""

from __future__ import annotations

import argparse
import json
import re

import math

from circuit_atlas.cli.common import add_model_arguments, add_prompt_arguments, model_placement, prompt_from_args
from circuit_atlas.errors import InterventionError

EXAMPLE = """\
interventions (repeatable):
  --set   LAYER:POS:FEATURE=VALUE     set the feature's activation to VALUE
  --scale LAYER:POS:FEATURE=FACTOR    multiply its activation by FACTOR
  --ablate LAYER:POS:FEATURE          set it to 0
POS is a position (negative counts from the end of the prompt: -1 is the last token), '*' for
every position, or a range A..B / A.. / ..B of absolute positions; an open range (A.. or '*')
also applies to every generated token. FEATURE may be a comma-separated list (e.g. 12,873).

examples:
  circuit-atlas steer --model demo --transcoders demo --prompt "the capital of the region containing dallas is" \\
      --ablate 3:-1:1204 --max-new-tokens 8
  circuit-atlas steer --model google/gemma-2-2b --transcoders gemma --prompt "Fact: the capital of Texas is" \\
      --set 20:-1..:4011=40 --scale 14:*:772,991=-2 --seed 1 --temperature 0.7
"""

_SPEC = re.compile(r"^\s*(-?\d+)\s*:\s*([^:]+?)\s*:\s*([\d,\s]+?)\s*(?:=\s*(\S+))?\s*$")


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "steer",
        help="set, scale or ablate features; show top tokens and generated text before/after",
        description="Intervene on transcoder features of a prompt and compare the model's outputs.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    add_prompt_arguments(parser)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="L:POS:F=VALUE",
                        help="set feature(s) F of layer L at POS to VALUE (see below)")
    parser.add_argument("--scale", dest="scales", action="append", default=[], metavar="L:POS:F=FACTOR",
                        help="multiply feature(s) F of layer L at POS by FACTOR")
    parser.add_argument("--ablate", dest="ablations", action="append", default=[], metavar="L:POS:F",
                        help="set feature(s) F of layer L at POS to 0")
    parser.add_argument("--mode", choices=["free", "constrained"], default="free",
                        help="free: the real model recomputes everything downstream (default); "
                             "constrained: attention, norms and MLPs frozen (the graph's direct paths)")
    parser.add_argument("--constrained-layers", help="layers held in constrained mode, e.g. '0-5,8' (default all)")
    parser.add_argument("--freeze-attention", action="store_true",
                        help="free mode: replay the clean attention patterns")
    parser.add_argument("--top-k", type=int, default=5, help="top tokens to show (default 5)")
    parser.add_argument("--max-new-tokens", type=int, default=20,
                        help="tokens to generate with and without steering (0: no generation; default 20)")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(func=run)
    return parser


# ---------------------------------------------------------------------- parsing
def parse_position(text: str):
    """'5', '-1', '*', 'A..B', 'A..', '..B' -> int | slice | None."""
    text = text.strip()
    if text in ("*", "all"):
        return None
    if ".." in text:
        start, _, stop = text.partition("..")
        try:
            return slice(int(start) if start.strip() else None, int(stop) if stop.strip() else None)
        except ValueError:
            raise InterventionError(f"position range {text!r} must look like A..B, A.. or ..B") from None
    try:
        return int(text)
    except ValueError:
        raise InterventionError(f"position {text!r} must be an integer, '*' or a range A..B") from None


def parse_intervention(text: str, op: str):
    """One `--set/--scale/--ablate` argument -> `Intervention`."""
    from circuit_atlas.interventions import Intervention

    flag = {"set": "--set", "scale": "--scale", "ablate": "--ablate"}[op]
    match = _SPEC.match(text)
    shape = "LAYER:POS:FEATURE" + ("" if op == "ablate" else f"={'VALUE' if op == 'set' else 'FACTOR'}")
    if match is None or (match.group(4) is None) != (op == "ablate"):
        raise InterventionError(f"{flag} {text!r}: expected {shape}")
    layer, position, features, number = match.groups()
    feature_ids = [int(f) for f in features.replace(" ", "").split(",") if f]
    if not feature_ids:
        raise InterventionError(f"{flag} {text!r}: no feature index")
    kwargs = {}
    if op != "ablate":
        try:
            kwargs["value" if op == "set" else "scale"] = float(number)
        except ValueError:
            raise InterventionError(f"{flag} {text!r}: {number!r} is not a number") from None
    else:
        kwargs["ablate"] = True
    return Intervention(int(layer), parse_position(position), feature_ids, **kwargs)


def parse_layers(text: str | None) -> list[int] | None:
    """'0-3,7' -> [0, 1, 2, 3, 7]."""
    if text is None:
        return None
    layers: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        bounds = part.split("-")
        try:
            if len(bounds) == 1:
                layers.append(int(bounds[0]))
            elif len(bounds) == 2:
                layers.extend(range(int(bounds[0]), int(bounds[1]) + 1))
            else:
                raise ValueError
        except ValueError:
            raise InterventionError(f"--constrained-layers {text!r}: use layers and ranges like '0-3,7'") from None
    return layers


def collect_interventions(args) -> list:
    found = [parse_intervention(t, "set") for t in args.sets]
    found += [parse_intervention(t, "scale") for t in args.scales]
    found += [parse_intervention(t, "ablate") for t in args.ablations]
    if not found:
        raise InterventionError("give at least one --set, --scale or --ablate")
    return found


def check_sampling(args) -> None:
    """Reject bad numbers before the model loads (generation would only check them after, and a
    negative --max-new-tokens would silently mean 'no generation')."""
    if args.top_k < 1:
        raise InterventionError(f"--top-k must be at least 1, got {args.top_k}")
    if args.max_new_tokens < 0:
        raise InterventionError(
            f"--max-new-tokens must be 0 (no generation) or more, got {args.max_new_tokens}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise InterventionError(f"--temperature must be a finite number ≥ 0, got {args.temperature}")
    if not 0.0 < args.top_p <= 1.0:
        raise InterventionError(f"--top-p must lie in (0, 1], got {args.top_p}")


# ---------------------------------------------------------------------- running
def run(args) -> int:
    interventions = collect_interventions(args)
    layers = parse_layers(args.constrained_layers)
    check_sampling(args)
    from circuit_atlas.replacement import load
    from circuit_atlas.interventions import generate, intervene

    prompt = prompt_from_args(args)
    model = load(args.model, args.transcoders, dtype=args.dtype, lazy_encoder=args.lazy_encoder,
                 **model_placement(args))
    prompt_only = _prompt_interventions(model, prompt, interventions)
    result = intervene(model, prompt, prompt_only, mode=args.mode, constrained_layers=layers,
                       freeze_attention=args.freeze_attention, top_k=args.top_k)
    generation = None
    if args.max_new_tokens > 0:
        generation = generate(model, prompt, interventions, args.max_new_tokens, temperature=args.temperature,
                              top_p=args.top_p, seed=args.seed)
    if args.json:
        payload = {"intervention": result.to_dict(), "generation": generation and generation.to_dict()}
        print(json.dumps(payload, ensure_ascii=False, indent=1))
    else:
        print(report(result, generation, _decode(model, result.tokens)))
    return 0


def _prompt_interventions(model, prompt, interventions) -> list:
    """Drop interventions that only act on generated tokens from the single-pass comparison."""
    from circuit_atlas.interventions.spec import position_rule

    length = int(model.tokenize(prompt).shape[0])
    zeroed = min(model.n_zeroed_positions, length)
    kept = []
    for item in interventions:
        rule = position_rule(item.position, length, zeroed, f"intervention {item.describe()}")
        if rule.covers(0, length, zeroed) or not rule.open_ended:
            kept.append(item)
    return kept


def _decode(model, tokens) -> str:
    ids = tokens.tolist()
    return " ".join(map(str, ids)) if model.tokenizer is None else model.tokenizer.decode(ids)


def report(result, generation, prompt_text: str) -> str:
    """The text the command prints."""
    lines = [f"prompt: {prompt_text!r} ({len(result.token_strings)} tokens)"]
    mode = result.mode + (" (attention frozen)" if result.freeze_attention else "")
    if result.constrained_layers is not None:
        mode += f", layers {list(result.constrained_layers)}"
    lines.append(f"interventions ({mode}):")
    for item in result.applied:
        for p, f, b, a in zip(item.positions.tolist(), item.features.tolist(), item.before, item.after):
            lines.append(f"  L{item.layer} @{p} {result.token_strings[p]!r} #{f}: {_number(b)} -> {_number(a)}")
    lines.append("top next tokens:")
    lines.append(f"  {'before':<30} after")
    for before, after in zip(result.top_before, result.top_after):
        left = f"{before.token!r} {before.prob:.3f}"
        lines.append(f"  {left:<30} {after.token!r} {after.prob:.3f}")
    lines.append(f"changed feature activations: {len(result.changes)}")
    for row in result.changes.rows(5):
        lines.append(f"  L{row['layer']} @{row['position']} #{row['feature']}: "
                     f"{_number(row['before'])} -> {_number(row['after'])}")
    if generation is not None:
        lines.append("generated (free mode; open position ranges also steer the new tokens):")
        lines.append(f"  default: {generation.default.text!r}")
        lines.append(f"  steered: {generation.steered.text!r}")
    return "\n".join(lines)


def _number(value) -> str:
    """4 significant digits, without the "-0" a ReLU of a tiny negative prints as."""
    return f"{float(value) + 0.0:.4g}"
