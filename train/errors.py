"""One-line errors of the training command lines (`nextscale.errors`, plus the trainings' own failures).

A bad option, file, data set or checkpoint exits with code 2; a run that fails on its own (non-finite
training, a peer process that froze or died) exits with code 1; `--debug` or NEXTSCALE_DEBUG=1 shows
the traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from nextscale.errors import run_cli as run_any_cli

T = TypeVar("T")


def collective_timeout(error: BaseException) -> str | None:
    """The one-line message of a collective that timed out (a frozen or dead peer), else None."""
    text = str(error)
    lowered = text.lower()
    if not isinstance(error, RuntimeError) or not ("timed out" in lowered or "timeout" in lowered):
        return None
    return (f"a collective operation timed out ({text.splitlines()[0][:200]}): another process froze or died; "
            "see its log, then resume with --resume latest (--collective-timeout sets the wait)")


def run_cli(config_class: type[T], main: Callable[[T], Any], argv: list[str] | None = None,
            defaults: Callable[[list[str]], T | None] | None = None) -> Any:
    """Parse a training config from the command line and run it, turning mistakes into one line.

    The defaults come from `defaults(argv)`, by default the resolver of the training
    (`nextscale.train.presets.resolve`: --preset, --config, the sizes the command line gives); the options
    the resolver reads itself (--preset, --config) are not passed on to the parser."""
    import sys

    from nextscale.data.badinput import TooManyBadFiles
    from nextscale.train import presets
    from nextscale.train.runtime import NonFiniteTraining
    from nextscale.train.state import CheckpointError

    given = list(sys.argv[1:] if argv is None else argv)
    resolver = defaults if defaults is not None else presets.resolver_of(config_class)
    resolved = None if resolver is None else (lambda _: resolver([a for a in given if a != "--debug"]))
    extra_help = presets.help_entries() if presets.resolver_of(config_class) is not None else ()
    return run_any_cli(config_class, main, presets.parser_arguments(given),
                       user_errors=(TooManyBadFiles, CheckpointError), failures=(NonFiniteTraining,),
                       explain=collective_timeout, defaults=resolved, extra_help=extra_help)
