"""Run blocking work in a thread and receive what it reports while it runs (a UI's live preview).

`stream(work)` calls `work(report)` in a worker thread and yields every value passed to `report` as
it arrives, then the work's result wrapped in `Finished`. An exception in the work is raised in the
consumer, after the values reported before it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

Report = TypeVar("Report")
Result = TypeVar("Result")


@dataclass(frozen=True)
class Finished(Generic[Result]):
    """The work's return value, always the last item of a stream."""

    value: Result


@dataclass(frozen=True)
class _Failed:
    error: BaseException


def stream(work: Callable[[Callable[[Report], None]], Result]) -> Iterator[Report | Finished[Result]]:
    """Yield what `work` reports, then `Finished(its result)`; re-raise its exception."""
    items: queue.Queue[object] = queue.Queue()

    def run() -> None:
        try:
            items.put(Finished(work(items.put)))
        except BaseException as error:  # handed to the consumer, which raises it
            items.put(_Failed(error))

    worker = threading.Thread(target=run, name="nextscale-ui-work", daemon=True)
    worker.start()
    while True:
        item = items.get()
        if isinstance(item, _Failed):
            worker.join()
            raise item.error
        yield item  # type: ignore[misc]
        if isinstance(item, Finished):
            worker.join()
            return
