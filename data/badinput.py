"""Bad input never crashes a run and never hangs it: skipped, counted by reason, warned about.

A file that is empty, not an image, truncated, corrupt or a decompression bomb is skipped, counted by
reason in a `BadInputTracker` and named in a (rate-limited) warning. Once a process has tried enough
inputs (`bad_check_after`, or the whole source if it is smaller) and more than `max_bad_fraction` of
them were bad, it raises `TooManyBadFiles`, naming the counts and how to tolerate them. The counts are
shared by the DataLoader workers and the main process, so they are exact with any number of workers.
"""

from __future__ import annotations

import logging
from collections import Counter

import torch
from torch.utils.data import get_worker_info

logger = logging.getLogger(__name__)


class TooManyBadFiles(RuntimeError):
    """More than `max_bad_fraction` of the inputs tried were unreadable."""


class BadInput(Exception):
    """One unreadable input; `reason` is a short category used for counting."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


REASONS = ("empty", "not_an_image", "truncated", "corrupt", "decompression_bomb", "too_large", "unreadable",
           "not_a_regular_file", "missing_image", "bad_shard", "bad_metadata")
"""Every reason an input is skipped for (the categories of `BadInput`)."""
MAX_READERS = 256
"""DataLoader workers a tracker counts for (each has a row of its own)."""
_UNTRIED, _GOOD = 0, 1  # an item's state; a bad item stores 2 + the index of its reason


class BadInputTracker:
    """Counts inputs tried and bad inputs by reason; warns (rate-limited) and aborts past the threshold.

    The counts live in shared memory, so the DataLoader workers (forked or spawned) and the main process
    add to the same counts: each reader writes a row of its own (no update is lost), and an input that
    several readers may meet (`item=`, a folder's file, met again next pass or by another worker) is
    counted once, from its state. The threshold applies to the counts of every reader together.
    """

    def __init__(self, max_bad_fraction: float, min_attempts: int = 100, max_warnings: int = 20,
                 items: int = 0) -> None:
        self.max_bad_fraction = max_bad_fraction
        self.min_attempts = min_attempts
        self.max_warnings = max_warnings
        # column 0: inputs tried, then one column per reason; rows: the main process, then each worker
        counts = torch.zeros((2, MAX_READERS + 1, 1 + len(REASONS)), dtype=torch.int64).share_memory_()
        self._rows = counts[0]
        self._tally = counts[1]
        """Items' first records as each reader saw them: a quick running count for the threshold, which two
        readers meeting one item at once could both add to (the reported counts come from `_items`)."""
        self._items = torch.zeros(max(items, 1), dtype=torch.int8).share_memory_()

    @staticmethod
    def _row() -> int:
        info = get_worker_info()
        if info is None:
            return 0
        if info.id >= MAX_READERS:
            raise ValueError(f"bad inputs are counted for at most {MAX_READERS} DataLoader workers: lower "
                             "--num-workers")
        return info.id + 1

    @property
    def counts(self) -> Counter:
        """Bad inputs by reason, exact over every reader."""
        totals = self._rows[:, 1:].sum(dim=0)
        states = torch.bincount(self._items.long(), minlength=2 + len(REASONS))[2:]
        return Counter({reason: int(count) for reason, count in zip(REASONS, (totals + states).tolist()) if count})

    @property
    def attempts(self) -> int:
        """Inputs tried, exact over every reader."""
        return int(self._rows[:, 0].sum()) + int((self._items != _UNTRIED).sum())

    @property
    def bad(self) -> int:
        return sum(self.counts.values())

    def snapshot(self) -> tuple[dict[str, int], torch.Tensor]:
        """(the counts of inputs recorded without an item, by reason; every item's state): what
        `merge_counts` adds up over processes, which may meet the same item."""
        totals = self._rows[:, 1:].sum(dim=0).tolist()
        return {reason: int(count) for reason, count in zip(REASONS, totals) if count}, self._items.clone()

    def is_bad(self, item: int) -> bool:
        """Whether `item` was found bad by any reader."""
        return int(self._items[item]) > _GOOD

    def record_good(self, item: int | None = None) -> None:
        """One input read; an `item` already recorded is not counted again."""
        if item is None:
            self._rows[self._row(), 0] += 1
        elif int(self._items[item]) == _UNTRIED:
            self._items[item] = _GOOD
            self._tally[self._row(), 0] += 1
        else:
            return
        self.check()

    def record_bad(self, name: str, reason: str, detail: str = "", item: int | None = None) -> None:
        """One unreadable input, warned about; an `item` already recorded is neither counted nor warned again."""
        column = 1 + REASONS.index(reason)
        if item is None:
            self._rows[self._row(), 0] += 1
            self._rows[self._row(), column] += 1
        elif int(self._items[item]) == _UNTRIED:
            self._items[item] = 1 + column
            self._tally[self._row(), 0] += 1
            self._tally[self._row(), column] += 1
        else:
            return
        self._warn(name, reason, detail)
        self.check()

    def _running(self) -> tuple[int, int]:
        """(tried, bad) from the quick running counts."""
        totals = (self._rows + self._tally).sum(dim=0)
        return int(totals[0]), int(totals[1:].sum())

    def _warn(self, name: str, reason: str, detail: str) -> None:
        # A broken shard can hold thousands of bad files: name the first few, then summarise at 10^k.
        bad = self._running()[1]
        if bad <= self.max_warnings:
            logger.warning("skipping bad input %s (%s): %s", name, reason, detail)
            if bad == self.max_warnings:
                logger.warning("further bad inputs are counted without a warning each; summaries at 10^k")
        elif str(bad).rstrip("0") == "1":  # 100, 1000, ...
            logger.warning("bad inputs so far: %s", self.summary())

    def summary(self) -> str:
        counts = self.counts
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(counts.items()))
        return f"{sum(counts.values())} of {self.attempts} inputs skipped ({reasons})"

    def check(self, final: bool = False) -> None:
        """Raise TooManyBadFiles past the threshold, once `min_attempts` were tried (or always if `final`)."""
        attempts, bad = self._running()
        if not attempts or not (final or attempts >= self.min_attempts):
            return
        if bad / attempts > self.max_bad_fraction:
            bombs = self.counts["decompression_bomb"]
            large = " (or raise max_image_pixels, if they are genuine large photos)" if bombs else ""
            raise TooManyBadFiles(
                f"{self.summary()}: {bad / attempts:.1%} is above max_bad_fraction="
                f"{self.max_bad_fraction}. Fix or remove the files named in the warnings above, or raise "
                f"max_bad_fraction in the data config to tolerate them{large}."
            )


def merge_counts(snapshots: list[tuple[dict[str, int], torch.Tensor]]) -> dict[str, int]:
    """Bad inputs by reason over the `snapshot`s of several trackers of the same inputs (one per process): the
    counts without an item add up, an item bad on any of them counts once."""
    total: Counter = Counter()
    states: torch.Tensor | None = None
    for counts, items in snapshots:
        total.update(counts)
        states = items if states is None else torch.maximum(states, items)
    if states is not None:
        found = torch.bincount(states.long(), minlength=2 + len(REASONS))[2:].tolist()
        total.update({reason: int(count) for reason, count in zip(REASONS, found) if count})
    return dict(sorted(total.items()))
