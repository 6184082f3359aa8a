"""Models whose weights do not sit on one device: accelerate's `device_map`.

A model too large for one GPU is split by transformers + accelerate (`from_pretrained(...,
device_map=...)`): each block of layers lives on a device, and blocks mapped to "cpu" or "disk"
keep their weights on the host or in an offload folder, on PyTorch's `meta` device between
calls; a hook on each such module loads them right before its forward and drops them after.

That engine is not ours; this module holds what the rest of circuit-atlas needs to live with
it: parse a user's `device_map`, find where a module computes, and read weights of offloaded
modules (our frozen forward and the QK attribution read norm gains and projections directly,
which would otherwise meet `meta` tensors). `accelerate` is an optional dependency
(`pip install "circuit-atlas[multi-gpu]"`); without it, every function here still works for
ordinarily loaded models, and only asking for a `device_map` fails, with a message saying what to
install.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import nn

from circuit_atlas.errors import ModelLoadError

try:  # optional: only models loaded with a device_map carry accelerate's hooks
    from accelerate.utils import align_module_device as _align_module_device
except ImportError:  # pragma: no cover - exercised where accelerate is not installed
    _align_module_device = None

# The strategies transformers accepts as a device_map string.
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
# Where a device_map may put a module besides a GPU: host memory, or the offload folder.
OFFLOAD_TARGETS = ("cpu", "disk")

DeviceMap = str | Mapping[str, str | int]


def accelerate_available() -> bool:
    return _align_module_device is not None


def parse_device_map(value: DeviceMap | None, what: str = "device_map") -> DeviceMap | None:
    """A strategy name ("auto", "balanced", ...) or a mapping module path -> device, from a
    Python value or the CLI's text (a strategy name or a JSON object); refuses anything else
    with a message naming `what`, before any weights are read."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text in DEVICE_MAP_STRATEGIES:
            return text
        if not text.startswith("{"):
            raise ModelLoadError(
                f"{what} {value!r} is neither a strategy ({', '.join(DEVICE_MAP_STRATEGIES)}) nor "
                'a JSON object such as \'{"model.embed_tokens": 0, "model.layers.0": 0, '
                '"model.layers.1": 1, "lm_head": 1}\''
            )
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelLoadError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, Mapping) or not value:
        raise ModelLoadError(f"{what} must be a strategy name or a non-empty mapping of module "
                             f"paths to devices, got {type(value).__name__}")
    for path, device in value.items():
        if not isinstance(path, str):
            raise ModelLoadError(f"{what}: module path {path!r} is not a string")
        if isinstance(device, bool) or not isinstance(device, (str, int)):
            raise ModelLoadError(f"{what}: device of {path!r} must be a GPU index, a device name, "
                                 f"'cpu' or 'disk', got {device!r}")
    return dict(value)


def uses_disk(device_map: DeviceMap | None) -> bool:
    return isinstance(device_map, Mapping) and "disk" in device_map.values()


def placement_of(device_map: Mapping[str, str | int], path: str) -> str | int | None:
    """Where an explicit device_map puts the module at `path`: the entry of the longest key that
    is `path` or one of its parents (transformers' rule), None when no key covers it."""
    best = None
    for key, device in device_map.items():
        if key == "" or path == key or path.startswith(key + "."):
            if best is None or len(key) > len(best[0]):
                best = (key, device)
    return None if best is None else best[1]


def check_tied_placement(device_map: DeviceMap, embed_path: str, head_path: str) -> None:
    """A checkpoint whose LM head shares the token embedding's weight (Gemma, tied Llamas) keeps
    one copy of it; transformers writes only that copy to the offload folder, so a map sending
    the two modules to different places fails at the first forward with a bare KeyError. Refuse
    it here instead, naming both entries."""
    if not isinstance(device_map, Mapping):
        return
    embed, head = placement_of(device_map, embed_path), placement_of(device_map, head_path)
    if embed != head:
        raise ModelLoadError(
            f"this checkpoint ties {head_path!r} to {embed_path!r} (one shared weight), but the "
            f"device_map puts them on {head!r} and {embed!r}; map both to the same device"
        )


def require_accelerate(what: str = "device_map") -> None:
    if not accelerate_available():
        raise ModelLoadError(
            f"{what} needs the 'accelerate' package, which is not installed; install it with "
            "pip install \"circuit-atlas[multi-gpu]\" (or pip install accelerate)"
        )


def is_dispatched(hf_model: nn.Module) -> bool:
    """Whether transformers placed this model with a device_map (its modules carry hooks)."""
    return bool(getattr(hf_model, "hf_device_map", None))


def execution_device(module: nn.Module) -> torch.device:
    """Where `module` computes: its accelerate hook's execution device when it has one (an
    offloaded module's weights sit on `meta` but it runs on that device), else the device of its
    first real parameter, else the CPU."""
    for candidate in (module, *module.modules()):
        hook = getattr(candidate, "_hf_hook", None)
        device = getattr(hook, "execution_device", None)
        if device is not None:
            return torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
    for parameter in module.parameters():
        if not parameter.is_meta:
            return parameter.device
    return torch.device("cpu")


def loaded_weights(module: nn.Module) -> AbstractContextManager[None]:
    """Inside this context `module`'s own weights are real tensors on its execution device, even
    when accelerate offloaded them (to the host or disk); outside it they may be `meta` again.
    A tensor read inside must be used (or copied) inside."""
    if _align_module_device is None or not _is_offloaded(module):
        return nullcontext()
    return _align_module_device(module)


def _is_offloaded(module: nn.Module) -> bool:
    hook = getattr(module, "_hf_hook", None)
    return bool(getattr(hook, "offload", False))


@contextmanager
def replaced_forward(module: nn.Module, forward: Callable) -> Iterator[None]:
    """Make `module` compute `forward(*args, **kwargs)` instead of its own code, restoring it after.

    A module that accelerate manages keeps its hook around the replacement: the hook moves the
    inputs to the module's device and loads offloaded weights before `forward` runs and drops
    them after, so `forward` may read the module's weights. (A PyTorch forward hook runs after
    accelerate has dropped them again, which is why the frozen norms replace the forward.)
    """
    if "_old_forward" in module.__dict__:  # accelerate's wrapper calls module._old_forward
        previous = module.__dict__["_old_forward"]
        module._old_forward = forward
        try:
            yield
        finally:
            module._old_forward = previous
        return
    previous = module.__dict__.get("forward")
    module.forward = forward
    try:
        yield
    finally:
        if previous is None:
            module.__dict__.pop("forward", None)
        else:
            module.forward = previous
