"""What a run trains: which layers (`--layers 2,5-7`) and which hook points (by name).

Hook points are the block-relative names every transcoder format uses (`hook_resid_mid`,
`ln2.hook_normalized`, `mlp.hook_in` as inputs; `mlp.hook_out`, `hook_mlp_out` as targets). A
TransformerLens-style full name, `blocks.<layers>.<name>`, is accepted too and also selects
those layers, so `--input-hook blocks.3.mlp.hook_in --output-hook blocks.3.mlp.hook_out` trains
layer 3 alone. Everything here is checked before a model is loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from circuit_atlas.models.adapters import INPUT_HOOKS, OUTPUT_HOOKS
from circuit_atlas.training.errors import TrainingConfigError

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
_FULL_NAME = re.compile(r"^blocks\.([0-9,\-*]+)\.(.+)$")


def parse_layers(text: str, *, flag: str = "--layers") -> list[int]:
    """`"2,5-7"` → `[2, 5, 6, 7]` (sorted, without repeats); `"*"` or `"all"` → [] (all)."""
    text = str(text).strip()
    if text in ("*", "all"):
        return []
    layers: set[int] = set()
    for part in text.replace(" ", "").split(","):
        match = _RANGE.match(part)
        if not match:
            raise TrainingConfigError(
                f"{flag}: {part!r} is not a layer number or a range like 5-7 (give e.g. 2,5-7)")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise TrainingConfigError(f"{flag}: the range {part!r} runs backwards")
        layers.update(range(first, last + 1))
    return sorted(layers)


def check_layers(layers: list[int], n_layers: int, model: str) -> list[int]:
    """The layers to train (all when `layers` is empty), each within the model's range."""
    if not layers:
        return list(range(n_layers))
    bad = [layer for layer in layers if layer >= n_layers]
    if bad:
        raise TrainingConfigError(
            f"--layers: layer {bad[0]} is out of range; model {model} has {n_layers} layers "
            f"(0..{n_layers - 1})")
    return layers


@dataclass(frozen=True)
class HookChoice:
    """Block-relative hook names and the layers their full names selected ([] = not chosen)."""

    input_hook: str
    output_hook: str
    layers: tuple[int, ...] = ()


def parse_hooks(input_hook: str, output_hook: str) -> HookChoice:
    """Validate the hook names (block-relative or `blocks.<layers>.<name>`)."""
    in_name, in_layers = _split_full_name(input_hook, "--input-hook")
    out_name, out_layers = _split_full_name(output_hook, "--output-hook")
    _check_name(in_name, INPUT_HOOKS, "--input-hook", "the encoders read")
    _check_name(out_name, OUTPUT_HOOKS, "--output-hook", "the decoders reconstruct")
    if in_layers is not None and out_layers is not None and in_layers != out_layers:
        raise TrainingConfigError(
            f"--input-hook {input_hook} and --output-hook {output_hook} name different layers; "
            "a transcoder reads and writes the same block")
    layers = in_layers if in_layers is not None else (out_layers or [])
    return HookChoice(in_name, out_name, tuple(layers))


def merge_layer_choices(from_flag: list[int], from_hooks: tuple[int, ...]) -> list[int]:
    """`--layers` and layers named in the hooks must agree when both are given."""
    if from_flag and from_hooks and list(from_hooks) != from_flag:
        raise TrainingConfigError(
            f"--layers selects {_spell(from_flag)} but the hook names select "
            f"{_spell(list(from_hooks))}; give the layers in one place")
    return from_flag or list(from_hooks)


def _split_full_name(name: str, flag: str) -> tuple[str, list[int] | None]:
    match = _FULL_NAME.match(name)
    if not match:
        return name, None
    spec = match.group(1)
    return match.group(2), parse_layers("*" if spec == "*" else spec, flag=flag)


def _check_name(name: str, allowed: tuple[str, ...], flag: str, role: str) -> None:
    if name not in allowed:
        raise TrainingConfigError(
            f"{flag}: unknown hook point {name!r}; the hook points {role} are "
            f"{', '.join(allowed)} (optionally as blocks.<layers>.<name>)")


def _spell(layers: list[int]) -> str:
    return ",".join(map(str, layers)) if layers else "all layers"
