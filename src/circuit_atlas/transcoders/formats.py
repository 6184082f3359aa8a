"""The transcoder formats we read and write, in one table (`docs/formats.md` §10).

An entry says how to recognise a folder of its format (the config file it holds), what to
download from the hub once that config is there, how to read a folder into per-layer parts, and
how to write a set. The local loader and the hub loader (`loading.py`) both go through `FORMATS`,
so supporting a new format is one module plus one entry here (`register_format` adds one at run
time; `tests/transcoders/test_formats.py` does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from circuit_atlas.errors import TranscoderFormatError
from circuit_atlas.transcoders import circuit_tracer_format, native
from circuit_atlas.transcoders.parts import EntryResolver, ReadOptions, SetParts
from circuit_atlas.transcoders.refs import TranscoderRef

if TYPE_CHECKING:
    from circuit_atlas.transcoders.core import Transcoders


@dataclass(frozen=True)
class TranscoderFormat:
    """One on-disk format.

    - `config_file`: the file whose presence marks a folder of this format (and the first file
      the hub loader downloads);
    - `read(folder, options)`: the layers and facts of the set in that folder;
    - `fetch(ref, config_path)`: with the config downloaded, download what else the format needs;
      returns the folder to read and, when files are fetched one by one, the resolver the reader
      must use for them (None otherwise);
    - `write(transcoders, folder)`: save a set in this format (None: read-only format).
    """

    name: str
    config_file: str
    read: Callable[[Path, ReadOptions], SetParts]
    fetch: Callable[[TranscoderRef, Path], tuple[Path, EntryResolver | None]]
    write: Callable[["Transcoders", Path], None] | None = None


NATIVE = TranscoderFormat(
    name="circuit-atlas",
    config_file=native.CONFIG_FILE,
    read=native.read_native,
    fetch=native.fetch_native,
    write=native.save_native,
)
CIRCUIT_TRACER = TranscoderFormat(  # also GemmaScope / GemmaScope-2 sets listed in its config
    name="circuit-tracer",
    config_file=circuit_tracer_format.CONFIG_FILE,
    read=circuit_tracer_format.read_directory,
    fetch=circuit_tracer_format.fetch_from_hub,
    write=circuit_tracer_format.save_circuit_tracer,
)

# In order of preference: a folder holding both configs is read as the first.
FORMATS: list[TranscoderFormat] = [NATIVE, CIRCUIT_TRACER]


def register_format(fmt: TranscoderFormat, *, first: bool = False) -> TranscoderFormat:
    """Add a format to the table (or replace the entry of the same name)."""
    FORMATS[:] = [f for f in FORMATS if f.name != fmt.name]
    FORMATS.insert(0 if first else len(FORMATS), fmt)
    return fmt


def config_files() -> list[str]:
    """The config file names of every format, in order of preference."""
    return [fmt.config_file for fmt in FORMATS]


def format_of(directory: Path) -> TranscoderFormat:
    """The format of a local folder, from the config file it holds."""
    for fmt in FORMATS:
        if (directory / fmt.config_file).is_file():
            return fmt
    expected = " or ".join(f"{fmt.config_file} ({fmt.name} format)" for fmt in FORMATS)
    listing = sorted(p.name for p in directory.iterdir())[:10]
    raise TranscoderFormatError(f"{directory}: no {expected}; directory holds {listing}")


def format_for_config(config_path: Path) -> TranscoderFormat:
    """The format a downloaded config file belongs to."""
    for fmt in FORMATS:
        if config_path.name == fmt.config_file:
            return fmt
    raise TranscoderFormatError(f"{config_path}: not the config file of any known format")
