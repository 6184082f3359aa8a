"""Where dashboard text comes from: the shared corpus readers, plus two additions.

`circuit_atlas.io.corpus` (also used by training) reads a folder of .txt files, a .txt file (blank-line separated
documents) or a JSONL file, with `documents(start)` resuming at a document index; it is reused
as is. Added here:

* `encoding_errors="replace"`: bytes that are not UTF-8 become U+FFFD instead of stopping the
  build (the shared readers always raise, naming file and line, which stays the default:
  silently replacing could hide a corpus in the wrong encoding). Such corpora have
  `encoding_errors = "replace"`, recorded in the store beside the unchanged description, so a
  build stopped by a bad byte continues under `--encoding-errors replace`.
* Hugging Face datasets (`hf:NAME` or a name that is not a local path), streamed with the
  `datasets` package, imported only when used.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from circuit_atlas.io.corpus import (
    Corpus,
    CorpusError,
    JsonlCorpus,
    TextFileCorpus,
    TextFolderCorpus,
    open_corpus,
)

ENCODING_ERRORS = ("strict", "replace")
_FILE_SUFFIXES = (".txt", ".jsonl", ".ndjson", ".json")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def open_feature_corpus(source: str | Path | Sequence[str], *, text_field: str = "text",
                        encoding_errors: str = "strict", split: str = "train") -> Corpus:
    """A corpus for `features build` (see module docstring for the accepted sources)."""
    if encoding_errors not in ENCODING_ERRORS:
        raise CorpusError(f"--encoding-errors must be one of {', '.join(ENCODING_ERRORS)}, "
                          f"got {encoding_errors!r}")
    if isinstance(source, (list, tuple)):
        return open_corpus(source)
    text = str(source)
    if text.startswith("hf:"):
        return HubDatasetCorpus(text[3:], split=split, text_field=text_field)
    path = Path(text).expanduser()
    if not path.exists() and _HUB_NAME.match(text) and path.suffix.lower() not in _FILE_SUFFIXES:
        return HubDatasetCorpus(text, split=split, text_field=text_field)
    corpus = open_corpus(path, text_field=text_field)
    if encoding_errors == "strict":
        return corpus
    return _replacing(corpus)


def _replacing(corpus: Corpus) -> Corpus:
    if isinstance(corpus, TextFolderCorpus):
        return _ReplacingFolder(corpus.folder)
    if isinstance(corpus, JsonlCorpus):
        return _ReplacingJsonl(corpus.path, corpus.text_field)
    if isinstance(corpus, TextFileCorpus):
        return _ReplacingTextFile(corpus.path)
    return corpus


def _replaced_lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            yield from enumerate(handle, start=1)
    except OSError as exc:
        raise CorpusError(f"{path}: cannot read ({exc.strerror})") from None


class _ReplacingFolder(TextFolderCorpus):
    """A .txt folder whose undecodable bytes become U+FFFD."""

    encoding_errors = "replace"

    def _raw_documents(self) -> Iterator[str]:
        for path in self.files:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise CorpusError(f"{path}: cannot read ({exc.strerror})") from None
            yield data.decode("utf-8", errors="replace")


class _ReplacingJsonl(JsonlCorpus):
    """A JSONL file whose undecodable bytes become U+FFFD."""

    encoding_errors = "replace"

    def _raw_documents(self) -> Iterator[str]:
        for number, line in _replaced_lines(self.path):
            if line.strip():
                yield self._text(line, number)


class _ReplacingTextFile(TextFileCorpus):
    """A blank-line separated .txt file whose undecodable bytes become U+FFFD."""

    encoding_errors = "replace"

    def _raw_documents(self) -> Iterator[str]:
        paragraph: list[str] = []
        for _, line in _replaced_lines(self.path):
            if line.strip():
                paragraph.append(line.rstrip("\n"))
                continue
            if paragraph:
                yield "\n".join(paragraph)
            paragraph = []
        if paragraph:
            yield "\n".join(paragraph)


class HubDatasetCorpus(Corpus):
    """A Hugging Face dataset, streamed (`datasets.load_dataset(..., streaming=True)`).

    `name` may carry a config after a colon: `hf:wikitext:wikitext-103-raw-v1`.
    """

    def __init__(self, name: str, *, split: str = "train", text_field: str = "text") -> None:
        self.name, _, self.config = name.partition(":")
        self.split, self.text_field = split, text_field
        self.description = f"hf:{name} [{split}] (field {text_field!r})"
        try:
            import datasets  # noqa: F401
        except ImportError:
            raise CorpusError(
                f"corpus {name!r} is not a local file or folder; reading it as a Hugging Face "
                "dataset needs the `datasets` package (pip install datasets)"
            ) from None

    def _raw_documents(self) -> Iterator[str]:
        import datasets

        try:
            rows = datasets.load_dataset(self.name, self.config or None, split=self.split,
                                         streaming=True)
        except Exception as exc:  # datasets raises many types (network, missing config, ...)
            raise CorpusError(f"cannot open Hugging Face dataset {self.description}: {exc}") from None
        for number, row in enumerate(rows):
            text = row.get(self.text_field) if isinstance(row, dict) else None
            if not isinstance(text, str):
                raise CorpusError(f"{self.description}, row {number}: no string field "
                                  f"{self.text_field!r} (fields: {json.dumps(sorted(row))[:200]})")
            yield text
