"""Log formatting (text or JSON lines) and the optional per-decision log.

The decision log is written off the hot path: CheckAcl applies the filter and
the sampling (two comparisons), then drops a tuple of raw values on a bounded
queue; one writer thread turns them into JSON lines, in batches, every 50 ms.
When the queue is full the entry is dropped and counted (`dropped`): a slow
disk must never slow the broker down. Files are written through WatchedFileHandler, which reopens the
file after logrotate moves it; `-` writes to stdout (journald).

Nothing secret passes through here: requests carry no passwords or keys.
Client-supplied values (username, client id, topic) are escaped: invalid
UTF-8 becomes `\\xNN`, control characters are JSON-escaped, long values are cut.
"""

from __future__ import annotations

import datetime
import itertools
import json
import logging
import logging.handlers
import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import Optional

from .ratelimit import RateLimitedLog

VALUE_LIMIT = 512  # bytes of a client-supplied value kept in a log line
QUEUE_SIZE = 10_000
BATCH = QUEUE_SIZE  # entries per write: all that is queued
FLUSH_INTERVAL_S = 0.05  # at most 20 writes a second; QUEUE_SIZE / this = 200k lines/s of headroom
LOG_FORMAT_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_errors = RateLimitedLog(logging.getLogger("policyd.logs"), interval_s=10.0)


def _iso_utc(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(timespec="milliseconds")


def client_value(value: bytes | str | None) -> Optional[str]:
    """A client-supplied value as log-safe text (JSON escapes the rest)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    text = value[:VALUE_LIMIT].decode("utf-8", "backslashreplace")
    return text + ("…" if len(value) > VALUE_LIMIT else "")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": _iso_utc(record.created), "level": record.levelname.lower(),
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=True)


def configure_logging(level: str = "info", fmt: str = "text", stream=None) -> None:
    """Root logging for `policyd serve`: level and text|json lines on stderr."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(LOG_FORMAT_TEXT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))


@dataclass(frozen=True)
class DecisionLogOptions:
    destination: str          # a file path, or "-" for stdout
    only_denials: bool = False
    sample_allows: int = 1    # log 1 in N allows; denials and errors are always logged


class DecisionLog:
    """One JSON line per daemon decision, written by a background thread."""

    def __init__(self, opts: DecisionLogOptions, stream=None, queue_size: int = QUEUE_SIZE):
        if opts.sample_allows < 1:
            raise ValueError("--decision-log-sample must be at least 1")
        self.opts = opts
        self.dropped = 0
        self.written = 0
        self._allows = itertools.count()  # next() is atomic under the GIL
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._handler = self._open(opts.destination, stream)
        self._thread = threading.Thread(target=self._drain, name="policyd-decision-log", daemon=True)
        self._thread.start()

    @staticmethod
    def _open(destination: str, stream) -> logging.Handler:
        if destination == "-":
            handler: logging.Handler = logging.StreamHandler(stream or sys.stdout)
        else:
            handler = logging.handlers.WatchedFileHandler(destination, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(message)s"))
        return handler

    def wants(self, result: str) -> bool:
        """Cheap pre-check on the hot path: is this decision logged at all?"""
        if result != "allow":
            return True
        if self.opts.only_denials:
            return False
        return next(self._allows) % self.opts.sample_allows == 0

    def record(self, *, result: str, access: str, username: bytes | None, client_id: bytes,
               topic: bytes, rule: str, generation: int, dry_run: bool = False) -> None:
        """Queue one decision; `result` is the engine's (allow|deny|error)."""
        if not self.wants(result):
            return
        try:
            self._queue.put_nowait((time.time(), result, access, username, client_id, topic,
                                    rule, generation, dry_run))
        except queue.Full:
            self.dropped += 1

    def _drain(self) -> None:
        """Write in batches: one write (and one logrotate check) for all that is queued."""
        while True:
            batch = [self._queue.get()]
            while batch[-1] is not None and len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = batch[-1] is None
            lines = [line for line in map(self._line, batch[:-1] if stop else batch) if line is not None]
            if lines:
                record = logging.LogRecord("policyd.decisions", logging.INFO, __file__, 0,
                                           "\n".join(lines), None, None)
                self._handler.handle(record)
                self.written += len(lines)
            if stop:
                return
            time.sleep(FLUSH_INTERVAL_S)  # let entries gather: fewer wake-ups competing with CheckAcl

    def _line(self, item: tuple) -> Optional[str]:
        try:
            return self._format(item)
        except Exception:  # a bad entry must not stop the log; say so once in a while
            self.dropped += 1
            _errors.exception("decision-log", "decision log entry not written")
            return None

    @staticmethod
    def _format(item: tuple) -> str:
        ts, result, access, username, client_id, topic, rule, generation, dry_run = item
        entry = {"time": _iso_utc(ts), "result": result, "access": access,
                 "identity": client_value(username), "client_id": client_value(client_id),
                 "topic": client_value(topic), "rule": rule, "generation": generation}
        if dry_run:
            entry["dry_run"] = True
            entry["answered"] = "allow" if result == "deny" else result
        return json.dumps(entry, ensure_ascii=True)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the writer and close the file."""
        self._queue.put(None)
        self._thread.join(timeout)
        self._handler.close()
