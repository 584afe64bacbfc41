"""User mistakes end a command with ONE line, `error: ...`, and exit code 2, never a traceback.

A mistake is an exception of the kinds that bad options, files and checkpoints raise (ValueError,
FileNotFoundError, a data or checkpoint error); a failed run (non-finite training, a peer that froze)
is one line too, with exit code 1. Anything else is a bug and keeps its traceback. `--debug` (or
NEXTSCALE_DEBUG=1) shows the traceback of every error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import tyro

T = TypeVar("T")
DEBUG_ENV = "NEXTSCALE_DEBUG"
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError,
                                                IsADirectoryError, PermissionError, ImportError, UnicodeError)


def _user_errors() -> tuple[type[BaseException], ...]:
    from nextscale.train.data.badinput import TooManyBadFiles
    from nextscale.train.state import CheckpointError

    return (*USER_ERRORS, TooManyBadFiles, CheckpointError)


def _failed_run_errors() -> tuple[type[BaseException], ...]:
    from nextscale.train.runtime import NonFiniteTraining

    return (NonFiniteTraining,)


def debugging(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def fail(message: str, code: int = 2) -> NoReturn:
    """Print `error: message` (one line) to stderr and exit with `code`."""
    first = " ".join(str(message).split())
    print(f"error: {first}", file=sys.stderr)
    raise SystemExit(code)


def is_collective_timeout(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("timed out" in text or "timeout" in text) and (
        "gloo" in text or "nccl" in text or "wait" in text or "collective" in text)


def run_cli(config_class: type[T], main: Callable[[T], Any], argv: list[str] | None = None) -> Any:
    """Parse `config_class` from the command line and call `main` with it, turning mistakes into one line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debugging(argv)
    argv = [arg for arg in argv if arg != "--debug"]
    try:
        config = tyro.cli(config_class, args=argv)
        return main(config)
    except _user_errors() as error:
        if debug:
            raise
        fail(str(error))
    except _failed_run_errors() as error:
        if debug:
            raise
        fail(str(error), code=1)
    except RuntimeError as error:
        if debug or not is_collective_timeout(error):
            raise
        fail(f"a collective operation timed out ({str(error).splitlines()[0][:200]}): another process froze or "
             "died; see its log, then resume with --resume latest (--collective-timeout sets the wait)", code=1)
