"""Bad input never crashes a run and never hangs it: skipped, counted by reason, warned about.

A file that is empty, not an image, truncated, corrupt or a decompression bomb is skipped, counted by
reason in a `BadInputTracker` and named in a (rate-limited) warning. Once a process has tried enough
inputs (`bad_check_after`, or the whole source if it is smaller) and more than `max_bad_fraction` of
them were bad, it raises `TooManyBadFiles`, naming the counts and how to tolerate them.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


class TooManyBadFiles(RuntimeError):
    """More than `max_bad_fraction` of the inputs tried were unreadable."""


class BadInput(Exception):
    """One unreadable input; `reason` is a short category used for counting."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class BadInputTracker:
    """Counts inputs tried and bad inputs by reason; warns (rate-limited) and aborts past the threshold.

    Each DataLoader worker holds its own copy, so counts are per process; the threshold is a fraction,
    so it means the same in every worker.
    """

    max_bad_fraction: float
    min_attempts: int = 100
    max_warnings: int = 20
    attempts: int = 0
    counts: Counter = field(default_factory=Counter)

    @property
    def bad(self) -> int:
        return sum(self.counts.values())

    def record_good(self) -> None:
        self.attempts += 1
        self.check()

    def record_bad(self, name: str, reason: str, detail: str = "") -> None:
        self.attempts += 1
        self.counts[reason] += 1
        self._warn(name, reason, detail)
        self.check()

    def _warn(self, name: str, reason: str, detail: str) -> None:
        # A broken shard can hold thousands of bad files: name the first few, then summarise at 10^k.
        bad = self.bad
        if bad <= self.max_warnings:
            logger.warning("skipping bad input %s (%s): %s", name, reason, detail)
            if bad == self.max_warnings:
                logger.warning("further bad inputs are counted without a warning each; summaries at 10^k")
        elif str(bad).rstrip("0") == "1":  # 100, 1000, ...
            logger.warning("bad inputs so far: %s", self.summary())

    def summary(self) -> str:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.counts.items()))
        return f"{self.bad} of {self.attempts} inputs skipped ({reasons})"

    def check(self, final: bool = False) -> None:
        """Raise TooManyBadFiles past the threshold, once `min_attempts` were tried (or always if `final`)."""
        if not self.attempts or not (final or self.attempts >= self.min_attempts):
            return
        if self.bad / self.attempts > self.max_bad_fraction:
            bombs = self.counts["decompression_bomb"]
            large = " (or raise max_image_pixels, if they are genuine large photos)" if bombs else ""
            raise TooManyBadFiles(
                f"{self.summary()}: {self.bad / self.attempts:.1%} is above max_bad_fraction="
                f"{self.max_bad_fraction}. Fix or remove the files named in the warnings above, or raise "
                f"max_bad_fraction in the data config to tolerate them{large}."
            )

