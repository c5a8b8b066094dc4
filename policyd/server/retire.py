"""Freeing a replaced policy without stalling the checks, and without trusting
anything to say nobody uses it any more.

When the last reference to a 100,000-identity policy goes, CPython frees it in
one cascade (about 40 ms, measured) during which no check can run. So a reload
hands the policy it replaced to this thread, which waits a grace period (checks
take `store.current` once and finish in microseconds), then retires it:
`CompiledPolicy.retire` marks it first and empties its tables in chunks after,
letting other threads run between chunks. A check that still holds it anyway
gets a denial from it, never an answer from half-emptied tables, and the
service asks the policy in force again. Nothing here reads reference counts:
their value is an implementation detail (Python 3.14 borrows references).
"""

from __future__ import annotations

import queue
import threading
import time

from ..engine import CompiledPolicy

# How long a replaced policy stays whole: far longer than any check takes.
GRACE_S = 1.0


class PolicyRetirement:
    def __init__(self, grace_s: float = GRACE_S) -> None:
        self.grace_s = grace_s
        self._queue: queue.SimpleQueue[tuple[CompiledPolicy, float] | threading.Event] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def retire(self, policy: CompiledPolicy) -> None:
        """Retire `policy` after the grace period (nothing may publish it again)."""
        self._ensure_thread()
        self._queue.put((policy, time.monotonic() + self.grace_s))

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """True once every policy handed over before this call has been retired."""
        done = threading.Event()
        self._ensure_thread()
        self._queue.put(done)
        return done.wait(timeout)

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None:  # started on first use: most stores never replace a policy
                self._thread = threading.Thread(target=self._run, name="policy-retirement", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, threading.Event):
                item.set()
                continue
            policy, due = item
            del item
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for _ in policy.retire():
                time.sleep(0)  # a check waiting for the interpreter gets it here
            del policy
