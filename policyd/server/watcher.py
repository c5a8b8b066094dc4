"""Reload the rules file when it changes on disk, and only once its writer is done.

Two sources, used together:
  * inotify on the file's directory (and on the directory of the file a symlink
    points to), through server/inotify.py: a write to the file marks it as being
    written; the writer closing it (IN_CLOSE_WRITE) or a file renamed over it
    (IN_MOVED_TO) marks it done, and only then is it loaded. A file being written
    in place, however slowly and whatever its prefix parses to, is never loaded
    halfway (SIGHUP and `policyd reload` still load whatever is there: asked for).
  * a stat() poll every 100 ms, for every change inotify does not report (a
    Kubernetes ConfigMap's symlink swap, network file systems, no inotify at
    all): a change of (device, inode, size, mtime, ctime) is acted upon once the
    file has stayed exactly the same for `settle_s`, and never while inotify says
    a write is not yet closed.

Never loading a half file, further:
  1. The loader reads the whole file in one go and validates all of it before
     anything is swapped (PolicyStore.reload), so a torn read fails validation
     and the last good policy stays in force.
  2. A file that fails that first look is not yet reported: a writer may have
     paused mid-file. It is loaded again, now loudly (log line, last error,
     counter), once it has stayed unchanged for another `settle_s`.
Content identical to the policy in force (a `touch`, a save without change,
or a reload that SIGHUP or the RPC already did) is not reloaded.
docs/operations.md says how editors and configuration managers should write it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Optional

from . import inotify
from .ratelimit import RateLimitedLog
from .store import PolicyStore, ReloadOutcome

log = logging.getLogger("policyd.watcher")

Signature = Optional[tuple[int, int, int, int, int]]

# A write still open after this long is worth a line in the log (it may be an editor left open).
LONG_WRITE_S = 30.0


def file_signature(path: str) -> Signature:
    """What changes when the file (or the file a symlink points to) changes; None if unreadable."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_sha256(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


class RulesFileWatcher:
    """Polls the store's rules file; every reload goes through PolicyStore.reload."""

    def __init__(self, store: PolicyStore, interval_s: float = 0.1, settle_s: float = 0.25,
                 clock: Callable[[], float] = time.monotonic, use_inotify: bool = True):
        self.store = store
        self.path = store.rules_file
        self.interval_s = interval_s
        self.settle_s = settle_s
        self._clock = clock
        self._seen: Signature = file_signature(self.path)  # the version last acted upon
        self._pending: Signature = None
        self._pending_since = 0.0
        self._pending_set = False
        self._doubted: Signature = None  # failed a quiet look; report if still unchanged
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._errors = RateLimitedLog(log, interval_s=10.0)
        self.polls = 0
        # inotify: the paths that are the rules file, whether a write to it is still open,
        # whether a writer finished since the last poll, and since when we wait for one.
        self._events = inotify.DirectoryEvents.open() if use_inotify else None
        self._paths: set[str] = set()
        self.writing = False
        self._done = False
        self._writing_since = 0.0
        self._long_write_told = False
        if self._events is not None:
            self._watch_directories()

    def _watch_directories(self) -> None:
        for path in {os.path.abspath(self.path), os.path.realpath(self.path)}:
            if self._events.watch(os.path.dirname(path)):
                self._paths.add(path)
        if not self._paths:
            self._events.close()
            self._events = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="policyd-watcher", daemon=True)
        self._thread.start()
        log.info("watching %s for changes (%s, and a stat every %.0f ms, settle %.0f ms)",
                 self.path, "inotify: loaded when its writer closes it" if self._events else "no inotify",
                 self.interval_s * 1000, self.settle_s * 1000)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._events is not None:
            self._events.close()
            self._events = None

    def _read_events(self, now: float) -> None:
        for path, mask in self._events.read():
            if mask == inotify.IN_Q_OVERFLOW:  # events lost: whether a write is open is unknown
                self.writing, self._done = False, False
            elif path in self._paths:
                if mask & inotify.IN_MODIFY and not self.writing:
                    self.writing, self._writing_since, self._long_write_told = True, now, False
                if mask & (inotify.IN_CLOSE_WRITE | inotify.IN_MOVED_TO | inotify.IN_DELETE | inotify.IN_MOVED_FROM):
                    self.writing, self._done = False, True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception:  # the watcher must outlive any surprise; SIGHUP still works
                self._errors.exception("poll", "rules file watcher: unexpected error")

    def poll(self) -> ReloadOutcome | None:
        """One look at the file; returns the outcome when it triggered a reload."""
        self.polls += 1
        now = self._clock()
        if self._events is not None:
            self._read_events(now)
        done, self._done = self._done, False
        sig = file_signature(self.path)
        if sig == self._seen:
            self._pending_set = False
            return None
        if self.writing:  # inotify saw a write that is not closed yet: never a half file
            if now - self._writing_since > LONG_WRITE_S and not self._long_write_told:
                self._long_write_told = True
                log.warning("%s has been open for writing for %.0f s: it is loaded once its writer "
                            "closes it (write a temporary file and rename it over; docs/operations.md)",
                            self.path, now - self._writing_since)
            self._pending_set = False
            return None
        if done and sig is not None and self._doubted != sig:  # the writer is done: no need to wait
            return self._settled(sig)
        if not self._pending_set or sig != self._pending:
            self._pending, self._pending_since, self._pending_set = sig, now, True
            return None
        if now - self._pending_since < self.settle_s:
            return None
        return self._settled(sig)

    def _settled(self, sig: Signature) -> ReloadOutcome | None:
        self._pending_set = False
        if sig is not None and self._unchanged_content():
            self._seen = sig
            log.debug("%s changed on disk but its content is the policy in force", self.path)
            return None
        if sig != self._doubted:
            outcome = self.store.reload("file-change", quiet_failure=True)
            if not outcome.ok:
                # Look again after another settle period before reporting.
                self._doubted = sig
                self._pending, self._pending_since, self._pending_set = sig, self._clock(), True
                return outcome
        else:
            outcome = self.store.reload("file-change")
        self._doubted = None
        self._seen = sig
        return outcome

    def _unchanged_content(self) -> bool:
        status = self.store.status()
        return self.store.last_reload_ok and file_sha256(self.path) == status.source_sha256
