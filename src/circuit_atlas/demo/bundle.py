"""Paths to, and data of, the demo model shipped inside the package.

Why: `circuit-atlas demo` and `--model demo` must work right after install, offline. The trained
model (transformers format) lives in `assets/model/`; `assets/toyworld.json` holds the corpus seed,
the world's facts, the held-out evaluation sets (with the swap partners the intervention case study
uses) and the accuracies measured when the model was trained. Both are written by
`circuit_atlas.demo.train`; this module only reads them.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from circuit_atlas.demo import toyworld
from circuit_atlas.errors import ModelLoadError

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
DEMO_REF = "demo"
DEFAULT_CITY = "dallas"
DEFAULT_PROMPT = toyworld.TWO_HOP_FRAME.format(city=DEFAULT_CITY)


def demo_model_path() -> Path:
    """Directory of the bundled model + tokenizer, loadable with `from_pretrained`."""
    path = ASSETS_DIR / "model"
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"the bundled demo model is missing: {path / 'config.json'} not found "
                             "(reinstall circuit-atlas, or retrain with "
                             "`python -m circuit_atlas.demo.train --out "
                             f"{ASSETS_DIR}`)")
    return path


def demo_world_path() -> Path:
    """The bundled `toyworld.json`."""
    path = ASSETS_DIR / "toyworld.json"
    if not path.is_file():
        raise ModelLoadError(f"the bundled toy-world file is missing: {path}")
    return path


def resolve_model_ref(ref: str) -> str:
    """`"demo"` becomes the bundled model's directory; any other hub id or path is unchanged."""
    return str(demo_model_path()) if ref == DEMO_REF else ref


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
