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


PEER_LOST = ("connection closed by peer", "connection reset by peer", "broken pipe", "remote worker crashing",
             "failed to recv", "recvvalue", "socket closed")
"""How a collective (gloo, the TCP store) says that the process at the other end is gone."""


def lost_peer(error: BaseException) -> str | None:
    """The one-line message of a collective whose peer process died (kill -9, the OOM killer), else None."""
    text = str(error)
    if not isinstance(error, RuntimeError) or not any(sign in text.lower() for sign in PEER_LOST):
        return None
    first = text.splitlines()[0] if text else type(error).__name__
    detail = first.split("] ", 1)[-1].split(". This is typically")[0][:160]  # gloo's message without its source line
    return (f"another process of this run died ({detail}): see its log (killed, out of memory?), then resume "
            "with --resume latest")


def process_failure(error: BaseException) -> str | None:
    """The one line of a run that another process failed (it died, or froze past the collective timeout)."""
    return lost_peer(error) or collective_timeout(error)


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
                       explain=process_failure, defaults=resolved, extra_help=extra_help)
