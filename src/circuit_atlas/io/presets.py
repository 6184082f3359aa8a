"""Short names for models and transcoder sets, resolved before anything is read.

Why one table at the bottom layer: `--model demo`, `--transcoders gemma` and friends must work in
every loader (`load_language_model`, `load_transcoders`, `circuit_atlas.load`, the CLI), and the
loaders must not import the demo package (it sits above them). So the names live here, as data:
a preset is either another reference (a hub repository) or a folder shipped inside the package.

The bundled demo (`circuit_atlas/demo/assets/`) is written by `scripts/train_demo.py` (model,
`toyworld.json`) and `scripts/build_demo_assets.py` (transcoders, dashboards);
`circuit_atlas.demo.bundle` reads the rest of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from circuit_atlas.errors import ModelLoadError

DEMO = "demo"
BUNDLED_ASSETS = Path(__file__).resolve().parent.parent / "demo" / "assets"


@dataclass(frozen=True)
class BundledFolder:
    """A folder shipped inside the package; `marker` is a file it must hold to be complete."""

    path: Path
    what: str
    marker: str
    rebuild: str

    def resolve(self) -> Path:
        """The folder, or a `ModelLoadError` saying what is missing and how to get it back."""
        if not (self.path / self.marker).is_file():
            raise ModelLoadError(
                f"the bundled {self.what} is missing: {self.path / self.marker} not found "
                f"(reinstall circuit-atlas, or rebuild it with `{self.rebuild}`)"
            )
        return self.path


def _demo_transcoders(kind: str) -> BundledFolder:
    return BundledFolder(BUNDLED_ASSETS / "transcoders" / kind, f"demo {kind.upper()} transcoders",
                         "circuit_atlas_transcoders.json", "python -m circuit_atlas.demo.build_assets")


DEMO_MODEL = BundledFolder(BUNDLED_ASSETS / "model", "demo model", "config.json",
                           f"python -m circuit_atlas.demo.train --out {BUNDLED_ASSETS}")
DEMO_TRANSCODERS = {kind: _demo_transcoders(kind) for kind in ("clt", "plt")}

MODEL_PRESETS: dict[str, BundledFolder] = {DEMO: DEMO_MODEL}
TRANSCODER_PRESETS: dict[str, str | BundledFolder] = {
    "gemma": "mwhanna/gemma-scope-transcoders",  # GemmaScope PLTs for Gemma-2-2B
    "llama": "mntss/transcoder-Llama-3.2-1B",  # Llama-3.2-1B skip-transcoders
    DEMO: DEMO_TRANSCODERS["clt"],
    f"{DEMO}-clt": DEMO_TRANSCODERS["clt"],
    f"{DEMO}-plt": DEMO_TRANSCODERS["plt"],
}


def model_preset(ref: str) -> str:
    """The folder a model preset names; any other reference unchanged."""
    preset = MODEL_PRESETS.get(ref) if isinstance(ref, str) else None
    return ref if preset is None else str(preset.resolve())


def transcoder_preset(name: str) -> str | Path | None:
    """What a transcoder preset names (a hub reference or a bundled folder), or None when
    `name` is no preset."""
    preset = TRANSCODER_PRESETS.get(name)
    if isinstance(preset, BundledFolder):
        return preset.resolve()
    return preset
