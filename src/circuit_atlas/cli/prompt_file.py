"""The prompts file of `circuit-atlas trace --prompts FILE`: one prompt per line, JSON Lines.

Each non-blank line is a JSON string (the prompt) or an object with these keys:

    prompt      text (BOS is prepended when the tokenizer has one)      } exactly one
    token_ids   list of token ids, used exactly as given                }
    slug        graph name (default: derived from the prompt text)
    targets     list of tokens (strings or ids) to explain
    logit_diff  [POS, NEG]: explain the logit difference POS - NEG (not with targets)

Example::

    "the capital of the region containing dallas is"
    {"prompt": "the capital of the region containing oakland is", "slug": "oakland"}
    {"prompt": "the capital of the region containing dallas is", "slug": "dallas-vs",
     "logit_diff": [" austin", " sacramento"]}

(the last object on one line). Every line is checked before any model is loaded, and all
problems are reported together, each naming its line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuit_atlas.errors import CircuitAtlasError

KEYS = ("prompt", "token_ids", "slug", "targets", "logit_diff")
MAX_REPORTED = 20
SLUG_CHARS = re.compile(r"[A-Za-z0-9]+")


@dataclass(frozen=True)
class PromptRequest:
    """One line of a prompts file."""

    line: int
    slug: str
    prompt: str | None = None
    token_ids: list[int] | None = None
    targets: list[str | int] | None = None
    logit_diff: list[str | int] | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def record(self) -> dict[str, Any]:
        """What was asked for, JSON-ready (a traced bundle keeps it to tell whether it is done)."""
        return {"prompt": self.prompt, "token_ids": self.token_ids, "targets": self.targets,
                "logit_diff": self.logit_diff}


def default_slug(prompt_text: str) -> str:
    words = SLUG_CHARS.findall(prompt_text.lower())
    slug = "-".join(words)[:60].strip("-")
    return slug or "graph"


def read_prompt_file(path: str | Path, check_slug) -> list[PromptRequest]:
    """Parse and check every line; raises CircuitAtlasError listing the bad lines.

    `check_slug(slug)` raises CircuitAtlasError for a slug that cannot be a graph name.
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CircuitAtlasError(f"--prompts {path} does not exist") from None
    except IsADirectoryError:
        raise CircuitAtlasError(f"--prompts {path} is a folder; give a .jsonl file") from None
    except UnicodeDecodeError as exc:
        raise CircuitAtlasError(f"--prompts {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise CircuitAtlasError(f"--prompts {path}: cannot read ({exc.strerror})") from None
    requests, problems, slugs = [], [], {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            request = _parse_line(line, number, check_slug)
        except CircuitAtlasError as exc:
            problems.append(f"line {number}: {exc}")
            continue
        if request.slug in slugs:
            problems.append(f"line {number}: slug {request.slug!r} is already used by line "
                            f"{slugs[request.slug]}; give this line its own \"slug\"")
            continue
        slugs[request.slug] = number
        requests.append(request)
    if problems:
        shown = problems[:MAX_REPORTED]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        raise CircuitAtlasError(f"--prompts {path} has {len(problems)} bad line(s):\n  "
                                + "\n  ".join(shown) + more)
    if not requests:
        raise CircuitAtlasError(f"--prompts {path} holds no prompts (one JSON string or object per line)")
    return requests


def _parse_line(line: str, number: int, check_slug) -> PromptRequest:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CircuitAtlasError(f"not valid JSON ({exc.msg} at column {exc.colno}); write a JSON "
                                'string or an object such as {"prompt": "..."}') from None
    if isinstance(value, str):
        value = {"prompt": value}
    if not isinstance(value, dict):
        raise CircuitAtlasError(f"expected a JSON string or object, got {type(value).__name__}")
    unknown = sorted(set(value) - set(KEYS))
    if unknown:
        raise CircuitAtlasError(f"unknown key(s) {', '.join(map(repr, unknown))}; the keys are "
                                + ", ".join(KEYS))
    prompt, token_ids = value.get("prompt"), value.get("token_ids")
    if (prompt is None) == (token_ids is None):
        raise CircuitAtlasError('give exactly one of "prompt" and "token_ids"')
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        raise CircuitAtlasError('"prompt" must be a non-empty string')
    if token_ids is not None:
        token_ids = _token_ids(token_ids)
    targets, diff = value.get("targets"), value.get("logit_diff")
    if targets is not None and diff is not None:
        raise CircuitAtlasError('give either "targets" or "logit_diff", not both')
    if targets is not None:
        targets = _tokens(targets, "targets")
        if not targets:
            raise CircuitAtlasError('"targets" is empty; leave it out for the most likely tokens')
    if diff is not None:
        diff = _tokens(diff, "logit_diff")
        if len(diff) != 2:
            raise CircuitAtlasError('"logit_diff" must be a list of two tokens [POS, NEG]')
    slug = value.get("slug")
    if slug is None:
        slug = default_slug(prompt) if prompt is not None else f"line-{number}"
    elif not isinstance(slug, str):
        raise CircuitAtlasError('"slug" must be a string')
    check_slug(slug)
    return PromptRequest(line=number, slug=slug, prompt=prompt, token_ids=token_ids,
                         targets=targets, logit_diff=diff)


def _token_ids(value: Any) -> list[int]:
    if (not isinstance(value, list) or not value
            or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value)):
        raise CircuitAtlasError('"token_ids" must be a non-empty list of non-negative integers')
    return value


def _tokens(value: Any, key: str) -> list[str | int]:
    if not isinstance(value, list) or not all(
            (isinstance(t, str) and t != "") or (isinstance(t, int) and not isinstance(t, bool))
            for t in value):
        raise CircuitAtlasError(f'"{key}" must be a list of tokens (non-empty strings or token ids)')
    return value
