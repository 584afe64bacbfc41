"""User mistakes end a command with ONE line, `error: ...`, and exit code 2, never a traceback.

A mistake is an exception of the kinds that bad options, files and checkpoints raise (ValueError,
FileNotFoundError, PermissionError, UnicodeError, a missing optional package...); a run that fails on
its own (e.g. non-finite training) is one line too, with exit code 1. Anything else is a bug and keeps
its traceback. `--debug` (or NEXTSCALE_DEBUG=1) shows the traceback of every error. Shared by every
command line (`sample.py`, the trainings).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import tyro

T = TypeVar("T")
DEBUG_ENV = "NEXTSCALE_DEBUG"
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, ImportError, UnicodeError)


_WORKER = re.compile(r"\ACaught (\w+) in (.+?)\.\nOriginal Traceback \(most recent call last\):\n(.*)\Z", re.DOTALL)


def original_message(message: str) -> str:
    """The message of the error itself when `message` is the wrapper a DataLoader worker's error arrives in
    ("Caught TooManyBadFiles in DataLoader worker process 0. Original Traceback ..."), else `message`."""
    wrapped = _WORKER.match(str(message))
    if wrapped is None:
        return str(message)
    name, traceback = wrapped.group(1), wrapped.group(3)
    last = list(re.finditer(rf"(?m)^(?:[\w.]+\.)?{re.escape(name)}(?:: |$)", traceback))
    return traceback[last[-1].end():].strip() or name if last else name


def fail(message: str, code: int = 2) -> NoReturn:
    """Print `error: message` (on one line; an error from a DataLoader worker without the worker's traceback)
    to stderr and exit with `code`. Under a torch launcher (`accelerate launch`, torchrun) the line is also
    its error file, so the launcher's failure summary names it rather than "To enable traceback see ..."."""
    line = f"error: {' '.join(original_message(message).split())}"
    print(line, file=sys.stderr)
    tell_launcher(line)
    raise SystemExit(code)


def tell_launcher(line: str) -> None:
    """Write `line` to the error file a torch elastic launcher reads for this process, if there is one."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    try:
        with open(path, "w") as handle:
            json.dump({"message": line, "timestamp": int(time.time())}, handle)
    except OSError:
        pass


_BOX = re.compile(r"[\u2500-\u257f\u2580-\u259f]+")
_TYRO_TITLES = ("Value error", "Parsing error", "Required options", "Unrecognized options")


HELP_FLAGS = ("-h", "--help")
VERBOSE_HELP_FLAGS = ("-H", "--help-verbose")


def print_help(config_class: type, argv: list[str], default: Any, extra_help: Sequence[tuple[str, str]]) -> bool:
    """For a config class with `HELP_FIRST` (`nextscale.cli_help`): print its short help for -h/--help, or
    tyro's full listing for -H/--help-verbose, and return True; False when neither is asked for or the
    class has no short help (tyro prints its own)."""
    if getattr(config_class, "HELP_FIRST", None) is None:
        return False
    if any(arg in HELP_FLAGS for arg in argv):
        from nextscale.cli_help import format_help

        instance = default if default is not None else config_class()
        sys.stdout.write(format_help(config_class, instance, os.path.basename(sys.argv[0]), extra_help))
        return True
    if any(arg in VERBOSE_HELP_FLAGS for arg in argv):
        try:
            tyro.cli(config_class, args=["--help"], default=default)
        except SystemExit:
            pass
        for invocation, text in extra_help:
            print(f"{invocation}\n    {text}")
        return True
    return False


def parse(config_class: type[T], argv: list[str], default: T | None = None,
          extra_help: Sequence[tuple[str, str]] = ()) -> T:
    """tyro.cli, with its framed multi-line error boxes (bad values, a config's own checks) condensed into
    one `error: ...` line (exit 2); successful parses are untouched. `default` replaces the class's defaults
    (e.g. a preset chosen by one option). --help is tyro's, or for a class with `HELP_FIRST` the short help
    of `nextscale.cli_help` (options `extra_help` listed first) and -H tyro's."""
    if print_help(config_class, argv, default, extra_help):
        raise SystemExit(0)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return tyro.cli(config_class, args=argv, default=default)
    except SystemExit as exit_:
        text = captured.getvalue()
        if exit_.code in (0, None) or not text.strip():
            sys.stderr.write(text)
            raise
        text = _BOX.sub(" ", text).split("For full helptext")[0].split("Argument helptext:")[0]
        lines = [line.strip() for line in text.splitlines() if line.strip() and line.strip() not in _TYRO_TITLES]
        fail(" ".join(lines) or "invalid command line (see --help)")
    finally:
        leftover = captured.getvalue()
        if leftover and not sys.exc_info()[0]:
            sys.stderr.write(leftover)


def run_cli(config_class: type[T], main: Callable[[T], Any], argv: list[str] | None = None,
            user_errors: tuple[type[BaseException], ...] = (),
            failures: tuple[type[BaseException], ...] = (),
            explain: Callable[[BaseException], str | None] | None = None,
            defaults: Callable[[list[str]], T | None] | None = None,
            extra_help: Sequence[tuple[str, str]] = ()) -> Any:
    """Parse `config_class` from the command line (tyro) and call `main` with it; mistakes become one line.

    `user_errors` add to `USER_ERRORS` (exit 2); `failures` exit 1; `explain(error)` may turn any other
    exception into a one-line message (exit 1), or return None to keep its traceback. `defaults(argv)` may
    return the instance whose values are the defaults of this command line (None: the class's own);
    `extra_help` lists options read outside the parser at the top of --help.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [arg for arg in argv if arg != "--debug"]
    try:
        return main(parse(config_class, argv, defaults(argv) if defaults is not None else None, extra_help))
    except (*USER_ERRORS, *user_errors) as error:
        if debug:
            raise
        fail(str(error) or type(error).__name__)
    except failures as error:
        if debug:
            raise
        fail(str(error), code=1)
    except Exception as error:
        message = explain(error) if explain is not None and not debug else None
        if message is None:
            raise
        fail(message, code=1)
