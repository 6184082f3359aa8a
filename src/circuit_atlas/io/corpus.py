"""Text corpora for training and dashboards: a folder of `.txt` files, a single `.txt` file, a
JSONL file with a text field, or an in-memory list.

A corpus is a *re-iterable, indexable stream of documents*: `documents(start)` resumes at any
document index without reading the texts before it into memory, which is what makes activation
streaming resumable and lets several consumers (training, dashboards) read the same corpus
independently. Empty / whitespace-only documents are skipped everywhere, so indices are stable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from circuit_atlas.errors import CircuitAtlasError


class CorpusError(CircuitAtlasError):
    """A corpus path is missing, unreadable or malformed (the message names file and line)."""


class Corpus:
    """Base class: subclasses implement `_raw_documents()`; everything else is shared."""

    description: str = "corpus"

    def _raw_documents(self) -> Iterator[str]:
        raise NotImplementedError

    def documents(self, start: int = 0) -> Iterator[str]:
        """Non-empty documents from index `start` on."""
        index = 0
        for text in self._raw_documents():
            if not text.strip():
                continue
            if index >= start:
                yield text
            index += 1

    def __iter__(self) -> Iterator[str]:
        return self.documents()

    def split(self, every: int = 20) -> tuple["Corpus", "Corpus"]:
        """(training part, held-out part): every `every`-th document is held out, so both parts
        span the whole corpus (a tail split would hold out only the last files' topics)."""
        if every < 2:
            raise CorpusError(f"held-out split: every must be ≥ 2, got {every}")
        return _Subset(self, every, held_out=False), _Subset(self, every, held_out=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description})"


class TextListCorpus(Corpus):
    """Documents given in memory (tests, notebooks)."""

    def __init__(self, texts: Sequence[str], description: str = "in-memory texts") -> None:
        self.texts = list(texts)
        self.description = description

    def _raw_documents(self) -> Iterator[str]:
        yield from self.texts


class TextFolderCorpus(Corpus):
    """Every `*.txt` below a folder (recursively, in sorted path order), one document per file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files = sorted(p for p in folder.rglob("*.txt") if p.is_file())
        if not self.files:
            raise CorpusError(f"corpus folder {folder} contains no .txt files")
        self.description = str(folder)

    def _raw_documents(self) -> Iterator[str]:
        for path in self.files:
            yield _read_text(path)


class TextFileCorpus(Corpus):
    """One `.txt` file; documents are separated by blank lines (paragraphs)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = str(path)

    def _raw_documents(self) -> Iterator[str]:
        paragraph: list[str] = []
        for _, line in _lines(self.path):
            if line.strip():
                paragraph.append(line.rstrip("\n"))
            elif paragraph:
                yield "\n".join(paragraph)
                paragraph = []
        if paragraph:
            yield "\n".join(paragraph)


class JsonlCorpus(Corpus):
    """One JSON object per line; the document is the string under `text_field`."""

    def __init__(self, path: Path, text_field: str = "text") -> None:
        self.path = path
        self.text_field = text_field
        self.description = f"{path} (field {text_field!r})"

    def _raw_documents(self) -> Iterator[str]:
        for number, line in _lines(self.path):
            if line.strip():
                yield self._text(line, number)

    def _text(self, line: str, number: int) -> str:
        where = f"{self.path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or self.text_field not in record:
            raise CorpusError(f"{where}: no {self.text_field!r} field (use --text-field to pick "
                              "another)")
        text = record[self.text_field]
        if not isinstance(text, str):
            raise CorpusError(f"{where}: field {self.text_field!r} is "
                              f"{type(text).__name__}, not a string")
        return text


class _Subset(Corpus):
    """Documents of `base` whose index is (held_out) or is not ≡ every−1 (mod every)."""

    def __init__(self, base: Corpus, every: int, held_out: bool) -> None:
        self.base, self.every, self.held_out = base, every, held_out
        part = "held-out" if held_out else "training"
        self.description = f"{base.description} [{part} part, 1 in {every} held out]"

    def _raw_documents(self) -> Iterator[str]:
        for index, text in enumerate(self.base.documents()):
            if (index % self.every == self.every - 1) == self.held_out:
                yield text


def open_corpus(source: str | Path | Sequence[str], *, text_field: str = "text") -> Corpus:
    """A corpus from a folder of .txt files, a .txt file, a .jsonl file, or a list of strings."""
    if isinstance(source, (list, tuple)):
        return TextListCorpus(source)
    path = Path(source).expanduser()
    if not path.exists():
        raise CorpusError(f"corpus {source} does not exist")
    if path.is_dir():
        return TextFolderCorpus(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return JsonlCorpus(path, text_field)
    if suffix == ".txt":
        return TextFileCorpus(path)
    raise CorpusError(
        f"corpus {source}: unsupported file type {path.suffix!r}; give a folder of .txt files, a "
        ".txt file or a .jsonl file")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise CorpusError(f"{path}: cannot read ({exc.strerror})") from None


_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) pairs, with decoding and I/O errors naming the file.

    Bytes are read up to each "\n" and decoded one piece at a time: a text-mode reader decodes
    ahead in blocks, so its error could not say on which line the bad bytes are. "\r\n" and a
    lone "\r" end lines too (as in text mode), and every line is returned ending in "\n".
    """
    number = 0
    try:
        with path.open("rb") as handle:
            for raw in handle:
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    line = number + 1 + raw[:exc.start].count(b"\r")
                    column = exc.start - raw.rfind(b"\r", 0, exc.start)
                    raise CorpusError(f"{path}, line {line}: not UTF-8 text ({exc.reason} at byte "
                                      f"{column} of the line)") from None
                for match in _LINE.finditer(text):
                    number += 1
                    yield number, match.group().rstrip("\r\n") + "\n"
    except OSError as exc:
        raise CorpusError(f"{path}: cannot read ({exc.strerror})") from None
