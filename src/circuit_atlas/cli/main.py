"""Entry point of the `circuit-atlas` command.

Each subcommand lives in its own module of this package and exposes
`register(subparsers) -> argparse.ArgumentParser`; the parser it returns must call
`set_defaults(func=callable)` where `callable(args) -> int | None`. Adding a subcommand means
adding a module and naming it in `SUBCOMMAND_MODULES`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from typing import Sequence

from circuit_atlas.errors import CircuitAtlasError, CircuitAtlasWarning

SUBCOMMAND_MODULES: tuple[str, ...] = (
    "trace",
    "serve",
    "export",
    "attention",
    "compare",
    "aggregate",
    "supernodes",
    "steer",
    "features",
    "train",
    "eval_transcoders",
    "demo",
)

DESCRIPTION = """\
circuit-atlas: trace attribution graphs through transcoders, explore them in a local web app,
test them with interventions, build feature dashboards and train transcoders.

Quick start (bundled demo model, no downloads):
  circuit-atlas demo

Trace your own model:
  circuit-atlas trace --model meta-llama/Llama-3.2-1B --transcoders mntss/clt-llama-3.2-1b-524k \\
      --prompt "The capital of the state containing Dallas is" --out graphs/dallas --serve
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="circuit-atlas",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f"circuit_atlas.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"circuit_atlas.cli.{name}":
                continue  # subcommand not built yet
            raise
        module.register(subparsers)
    return parser


def describe_os_error(exc: OSError) -> str:
    """`[Errno 20] Not a directory: 'x/y'` -> `x/y: not a directory`; other OSErrors as is."""
    if exc.strerror and exc.filename is not None:
        target = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else exc.filename
        return f"{target}: {exc.strerror.lower()}"
    return str(exc) or type(exc).__name__


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Our warnings as one `warning:` line (others as Python shows them)."""
    if issubclass(category, CircuitAtlasWarning):
        print(f"warning: {message}", file=file or sys.stderr)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            warnings.simplefilter("default", CircuitAtlasWarning)
            result = args.func(args)
    except CircuitAtlasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        # Last resort for file-system problems the commands' own checks did not foresee (disk
        # full, permissions, a path that changed mid-run): the message names the file.
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
