"""Reload the rules file when it changes on disk.

A small stat() poll rather than inotify (or the `watchdog` package): it sees
every way a file gets replaced — written in place, an editor's temp file
renamed over it, a Kubernetes ConfigMap's symlink swap, a network file
system — with no dependency and no watch on the directory to lose; a stat
every 100 ms costs nothing measurable.

Never loading a half file:
  1. A change of (device, inode, size, mtime, ctime) is only acted upon once
     the file has stayed exactly the same for `settle_s`.
  2. The loader reads the whole file in one go and validates all of it before
     anything is swapped (PolicyStore.reload), so a torn read fails validation
     and the last good policy stays in force.
  3. A file that fails that first look is not yet reported: a writer may have
     paused mid-file. It is loaded again, now loudly (log line, last error,
     counter), once it has stayed unchanged for another `settle_s`.
Content identical to the policy in force (a `touch`, a save without change,
or a reload that SIGHUP or the RPC already did) is not reloaded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Optional

from .ratelimit import RateLimitedLog
from .store import PolicyStore, ReloadOutcome

log = logging.getLogger("policyd.watcher")

Signature = Optional[tuple[int, int, int, int, int]]


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
                 clock: Callable[[], float] = time.monotonic):
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

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="policyd-watcher", daemon=True)
        self._thread.start()
        log.info("watching %s for changes (every %.0f ms, settle %.0f ms)",
                 self.path, self.interval_s * 1000, self.settle_s * 1000)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

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
        sig = file_signature(self.path)
        if sig == self._seen:
            self._pending_set = False
            return None
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
