"""One clear log line per kind of error, at most once per interval."""

from __future__ import annotations

import logging
import threading
import time


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, interval_s: float = 10.0):
        self.logger = logger
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def _admit(self, kind: str) -> int | None:
        """None if this line is suppressed, else how many were suppressed before it."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.interval_s:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return None
            self._last[kind] = now
            return self._suppressed.pop(kind, 0)

    def _emit(self, level: int, kind: str, msg: str, args: tuple, exc_info: bool) -> None:
        suppressed = self._admit(kind)
        if suppressed is None:
            return
        if suppressed:
            msg += f" ({suppressed} similar suppressed)"
        self.logger.log(level, msg, *args, exc_info=exc_info)

    def warning(self, kind: str, msg: str, *args: object) -> None:
        self._emit(logging.WARNING, kind, msg, args, False)

    def error(self, kind: str, msg: str, *args: object) -> None:
        self._emit(logging.ERROR, kind, msg, args, False)

    def exception(self, kind: str, msg: str, *args: object) -> None:
        self._emit(logging.ERROR, kind, msg, args, True)
