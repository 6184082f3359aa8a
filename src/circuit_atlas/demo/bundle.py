"""Paths to, and data of, the demo model shipped inside the package.

Why: `circuit-atlas demo` and `--model demo` must work right after install, offline. The trained
model (transformers format) lives in `assets/model/`; `assets/toyworld.json` holds the corpus seed,
the world's facts, the held-out evaluation sets (with the swap partners the intervention case study
uses) and the accuracies measured when the model was trained. Both are written by
`circuit_atlas.demo.train`. Its transcoders (`assets/transcoders/<kind>/`, native format, with
`assets/transcoders/report.json`) and feature dashboards (`assets/features/<kind>/`) are written
by `circuit_atlas.demo.build_assets`. This module only reads them.

Reference strings: `--model demo` is the bundled model; `--transcoders demo` its cross-layer
transcoder, `demo-clt` / `demo-plt` name a kind explicitly. Those names are entries of the preset
table every loader consults (`circuit_atlas.io.presets`); this module reads through it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from circuit_atlas.demo import toyworld
from circuit_atlas.errors import ModelLoadError
from circuit_atlas.io.presets import (
    BUNDLED_ASSETS,
    DEMO,
    DEMO_MODEL,
    DEMO_TRANSCODERS,
    TRANSCODER_PRESETS,
    model_preset,
)

ASSETS_DIR = BUNDLED_ASSETS
DEMO_REF = DEMO
DEFAULT_CITY = "dallas"
DEFAULT_PROMPT = toyworld.TWO_HOP_FRAME.format(city=DEFAULT_CITY)
TRANSCODER_KINDS = tuple(DEMO_TRANSCODERS)
DEFAULT_TRANSCODER_KIND = "clt"
TRANSCODER_REFS = {name: preset.path.name for name, preset in TRANSCODER_PRESETS.items()
                   if name.startswith(DEMO) and not isinstance(preset, str)}
TRANSCODER_REPORT = "report.json"


def demo_model_path() -> Path:
    """Directory of the bundled model + tokenizer, loadable with `from_pretrained`."""
    return DEMO_MODEL.resolve()


def demo_world_path() -> Path:
    """The bundled `toyworld.json`."""
    path = ASSETS_DIR / "toyworld.json"
    if not path.is_file():
        raise ModelLoadError(f"the bundled toy-world file is missing: {path}")
    return path


def resolve_model_ref(ref: str) -> str:
    """`"demo"` becomes the bundled model's directory; any other hub id or path is unchanged."""
    return model_preset(ref)


def demo_transcoders_path(kind: str = DEFAULT_TRANSCODER_KIND) -> Path:
    """Directory of the bundled transcoders of `kind` ("clt" or "plt"), native format."""
    if kind not in TRANSCODER_KINDS:
        raise ModelLoadError(f"demo transcoders come in kinds {', '.join(TRANSCODER_KINDS)}, "
                             f"not {kind!r}")
    return DEMO_TRANSCODERS[kind].resolve()


def demo_features_path(kind: str = DEFAULT_TRANSCODER_KIND) -> Path:
    """Folder of the bundled feature store (dashboards + labels) of the `kind` transcoders."""
    path = ASSETS_DIR / "features" / kind
    if not (path / "features.sqlite").is_file():
        raise ModelLoadError(f"the bundled demo feature store is missing: {path / 'features.sqlite'}"
                             " (rebuild it with `python -m circuit_atlas.demo.build_assets`)")
    return path


def resolve_transcoders_ref(ref: str) -> str:
    """`"demo"` / `"demo-clt"` / `"demo-plt"` become the bundled set's directory; any other
    reference is unchanged."""
    kind = TRANSCODER_REFS.get(ref) if isinstance(ref, str) else None
    return ref if kind is None else str(demo_transcoders_path(kind))


def transcoders_report() -> dict:
    """Training settings and held-out metrics of the bundled transcoders (by kind)."""
    path = ASSETS_DIR / "transcoders" / TRANSCODER_REPORT
    if not path.is_file():
        raise ModelLoadError(f"the bundled transcoder report is missing: {path}")
    return json.loads(path.read_text())


@lru_cache(maxsize=1)
def load_toyworld() -> dict:
    """The parsed `toyworld.json` (cached; treat as read-only)."""
    path = demo_world_path()
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from exc


def demo_world() -> toyworld.World:
    """The facts of the world the bundled model was trained on."""
    return toyworld.World.from_json(load_toyworld()["world"])


def two_hop_eval_items() -> list[toyworld.TwoHopItem]:
    """Held-out composed questions with answer, intermediate region and swap partner."""
    return [toyworld.TwoHopItem(**item) for item in load_toyworld()["eval"]["two_hop"]]


def default_two_hop_item() -> toyworld.TwoHopItem:
    """The held-out item of `DEFAULT_PROMPT` (dallas is always held out)."""
    return next(i for i in two_hop_eval_items() if i.city == DEFAULT_CITY)


def _prompt_items(family: str) -> list[toyworld.PromptItem]:
    return [toyworld.PromptItem(**item) for item in load_toyworld()["eval"][family]]


def one_hop_eval_items() -> list[toyworld.PromptItem]:
    """"the region containing <held-out city> is" -> region."""
    return _prompt_items("one_hop")


def addition_eval_items() -> list[toyworld.PromptItem]:
    """Held-out sums "a+b=" -> digits."""
    return _prompt_items("addition")


def multilingual_eval_items() -> list[toyworld.PromptItem]:
    """Held-out french / spanish opposite questions."""
    return _prompt_items("multilingual")


def demo_metrics() -> dict:
    """Accuracies measured at the end of training (see `demo.train.evaluate_world`)."""
    return {k: v for k, v in load_toyworld()["metrics"].items() if k != "history"}


def load_demo_hf(device: str | None = None):
    """(LlamaForCausalLM, tokenizer) of the bundled model, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = demo_model_path()
    model = AutoModelForCausalLM.from_pretrained(str(path))
    if device is not None:
        model = model.to(device)
    return model.eval(), AutoTokenizer.from_pretrained(str(path))
