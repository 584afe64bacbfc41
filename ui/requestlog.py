"""The server's request log: one line when a request arrives (its settings) and one when it ends (its
outcome and time), numbered so that the two can be matched in a busy log."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

LOGGER = logging.getLogger("nextscale.ui")


@dataclass
class RequestRecord:
    """One request in flight."""

    number: int
    kind: str
    started: float = field(default_factory=time.perf_counter)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


class RequestLog:
    """Numbers requests and logs them to the `nextscale.ui` logger."""

    def __init__(self, logger: logging.Logger = LOGGER) -> None:
        self.logger = logger
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()

    def start(self, kind: str, settings: Mapping[str, object]) -> RequestRecord:
        with self._lock:
            record = RequestRecord(next(self._numbers), kind)
        described = " ".join(f"{name}={value!r}" for name, value in settings.items())
        self.logger.info("request %d %s: %s", record.number, record.kind, described)
        return record

    def done(self, record: RequestRecord, outcome: str) -> None:
        self.logger.info("request %d %s done in %.2f s: %s", record.number, record.kind, record.seconds, outcome)

    def refused(self, record: RequestRecord, error: BaseException) -> None:
        self.logger.warning("request %d %s refused after %.2f s: %s", record.number, record.kind, record.seconds, error)

    def failed(self, record: RequestRecord, error: BaseException) -> None:
        """An unexpected error: the traceback goes to the log, never to the page."""
        self.logger.error("request %d %s failed after %.2f s", record.number, record.kind, record.seconds,
                          exc_info=error)
