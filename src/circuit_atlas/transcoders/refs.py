"""Transcoder reference strings and fetching them from the Hugging Face hub.

Accepts every form circuit-tracer accepts (`docs/formats.md` §2), so users can paste the same
strings: a local directory, a preset (`gemma`, `llama`, and our bundled `demo` sets; the table is
`io.presets`), `org/repo`, `org/repo/sub/folder`, either with `@revision` (everything after the
first `@`), and `hf://org/repo/sub?revision=rev`. The `scan` identifier is
`repo_id[//subfolder][@revision]`, because the graph frontend uses it to find feature files.

Downloads go through `huggingface_hub` (so its cache, tokens and offline mode apply) and fetch
only what the format needs: the config first, then what that format's registry entry asks for
(`formats.py`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from circuit_atlas.errors import TranscoderFormatError
from circuit_atlas.io.presets import TRANSCODER_PRESETS, transcoder_preset

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_FORMS = ("a local directory, 'org/repo', 'org/repo/sub/folder', either with '@revision', "
          "'hf://org/repo/sub/folder?revision=rev', or a preset ("
          + ", ".join(TRANSCODER_PRESETS) + ")")


@dataclass(frozen=True)
class TranscoderRef:
    """A parsed reference: either `local_path`, or `repo_id` (+ `subfolder`, `revision`)."""

    text: str
    local_path: Path | None = None
    repo_id: str | None = None
    subfolder: str | None = None
    revision: str | None = None

    @property
    def scan(self) -> str | None:
        """The scan identifier (`docs/formats.md` §2); None for local directories."""
        if self.repo_id is None:
            return None
        scan = self.repo_id
        if self.subfolder:
            scan += "//" + self.subfolder
        if self.revision:
            scan += "@" + self.revision
        return scan

    def in_repo(self, filename: str) -> str:
        """Path of `filename` inside the repo, under the subfolder."""
        return f"{self.subfolder}/{filename}" if self.subfolder else filename


def _bad(text: str, why: str) -> TranscoderFormatError:
    return TranscoderFormatError(f"bad transcoder reference {text!r}: {why}; expected {_FORMS}")


def _looks_local(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~", "\\")) or text in (".", "..") or bool(
        re.match(r"^[A-Za-z]:[\\/]", text)
    )


def parse_reference(ref: str | Path) -> TranscoderRef:
    """Parse a user's reference string; raises TranscoderFormatError naming it when malformed."""
    if isinstance(ref, Path):
        return _local(str(ref), ref)
    if not isinstance(ref, str):
        raise TranscoderFormatError(f"transcoder reference must be a string, got {type(ref).__name__}")
    text = ref.strip()
    if not text:
        raise _bad(ref, "it is empty")
    preset = transcoder_preset(text)
    if isinstance(preset, Path):
        return _local(ref, preset)
    if preset is not None:
        return _parse_repo(ref, preset)
    if text.startswith("hf://"):
        return _parse_uri(ref, text)
    if _looks_local(text) or Path(text).expanduser().is_dir():
        return _local(ref, Path(text))
    return _parse_repo(ref, text)


def _local(ref: str, path: Path) -> TranscoderRef:
    path = path.expanduser()
    if not path.exists():
        raise TranscoderFormatError(f"transcoder directory {str(path)!r} does not exist")
    if not path.is_dir():
        raise TranscoderFormatError(
            f"transcoder reference {str(path)!r} is a file; pass the directory holding the "
            "set's config file and weights"
        )
    return TranscoderRef(ref, local_path=path.resolve())


def _split_repo_path(ref: str, path: str) -> tuple[str, str | None]:
    parts = path.strip("/").split("/")
    if len(parts) < 2:
        raise _bad(ref, "a hub reference needs 'org/repo'")
    for part in parts[:2]:
        if not _NAME.match(part) or ".." in part:
            raise _bad(ref, f"{part!r} is not a valid organisation or repository name")
    sub = [p for p in parts[2:]]
    if any(p in ("", ".", "..") for p in sub):
        raise _bad(ref, "the subfolder has an empty, '.' or '..' component")
    return f"{parts[0]}/{parts[1]}", "/".join(sub) or None


def _parse_repo(ref: str, text: str) -> TranscoderRef:
    path, at, revision = text.partition("@")
    if at and not revision:
        raise _bad(ref, "nothing follows '@' (the revision)")
    if "?" in path or "#" in path or " " in path:
        raise _bad(ref, "unexpected '?', '#' or space")
    repo_id, subfolder = _split_repo_path(ref, path)
    return TranscoderRef(ref, repo_id=repo_id, subfolder=subfolder, revision=revision or None)


def _parse_uri(ref: str, text: str) -> TranscoderRef:
    parsed = urlsplit(text)
    query = parse_qs(parsed.query)
    unknown = set(query) - {"revision"}
    if unknown:
        raise _bad(ref, f"unknown query key(s) {sorted(unknown)} (only 'revision')")
    revision = query.get("revision", [None])[-1]
    repo_id, subfolder = _split_repo_path(ref, parsed.netloc + parsed.path)
    return TranscoderRef(ref, repo_id=repo_id, subfolder=subfolder, revision=revision)


def parse_hf_file_uri(uri: str) -> tuple[str, str, str | None]:
    """`hf://org/repo/path/file?revision=rev` (a `transcoders` list entry) -> (repo, file, rev)."""
    ref = _parse_uri(uri, uri)
    if ref.subfolder is None:
        raise _bad(uri, "an hf:// file entry needs a file path after 'org/repo'")
    assert ref.repo_id is not None
    return ref.repo_id, ref.subfolder, ref.revision


# ---------------------------------------------------------------------------------------------
# hub access (not exercised by the offline test suite except through mocks)


def _hub_error(what: str, repo_id: str, revision: str | None, exc: Exception) -> TranscoderFormatError:
    from huggingface_hub.errors import LocalEntryNotFoundError

    at = f"@{revision}" if revision else ""
    hint = ""
    if isinstance(exc, LocalEntryNotFoundError):
        hint = " (hub unreachable and not in the local cache; check the network or HF_HUB_OFFLINE)"
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    return TranscoderFormatError(
        f"could not download {what} from Hugging Face repo {repo_id}{at}{hint}: {type(exc).__name__}: {first_line}"
    )


def hub_file(repo_id: str, filename: str, revision: str | None) -> Path:
    """Download (or find in the HF cache) one file; hub failures become TranscoderFormatError."""
    import huggingface_hub

    try:
        return Path(huggingface_hub.hf_hub_download(repo_id, filename, revision=revision))
    except Exception as exc:  # the hub raises many types (HTTP, offline, auth, not found)
        raise _hub_error(f"file {filename!r}", repo_id, revision, exc) from exc


def hub_snapshot(repo_id: str, revision: str | None, patterns: list[str]) -> Path:
    """Download the files matching `patterns` and return the snapshot root."""
    import huggingface_hub

    try:
        return Path(huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except Exception as exc:
        raise _hub_error(f"files {patterns}", repo_id, revision, exc) from exc


def _is_missing_entry(exc: BaseException) -> bool:
    """True when the hub (or, offline, the cache) answered "no such file": try the next name.

    A `LocalEntryNotFoundError` while online means the hub was unreachable; probing a second
    file name would only repeat the network retries, so that is reported at once.
    """
    from huggingface_hub import constants
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    cause = exc.__cause__
    if isinstance(cause, LocalEntryNotFoundError):
        return bool(constants.HF_HUB_OFFLINE)
    return isinstance(cause, EntryNotFoundError)


def fetch_config(ref: TranscoderRef, names: Sequence[str]) -> Path:
    """Download the first of the config files `names` (one per known format, in the registry's
    order of preference) that the repository folder has; return its path."""
    assert ref.repo_id is not None and names
    for name in names[:-1]:
        try:
            return hub_file(ref.repo_id, ref.in_repo(name), ref.revision)
        except TranscoderFormatError as exc:
            if not _is_missing_entry(exc):
                raise
    return hub_file(ref.repo_id, ref.in_repo(names[-1]), ref.revision)


def fetch_weights(ref: TranscoderRef, patterns: list[str]) -> Path:
    """Download the weight files of the subfolder matching `patterns`; return the local folder."""
    assert ref.repo_id is not None
    full = [ref.in_repo(p) for p in patterns]
    root = hub_snapshot(ref.repo_id, ref.revision, full)
    return root / ref.subfolder if ref.subfolder else root
