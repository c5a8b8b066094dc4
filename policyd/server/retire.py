"""Freeing a replaced policy without stalling the checks.

When the last reference to a 100,000-identity policy goes, CPython frees it in
one cascade (about 40 ms, measured) during which no check can run. So a reload
hands the policy it replaced to this thread instead, which waits until no check
holds it any more (checks take `store.current` once and keep that object; only
references can keep it alive, and none is added after the swap), then empties its
tables in chunks, letting other threads run between chunks.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time

from ..engine import CompiledPolicy

log = logging.getLogger("policyd.retire")

# References that are ours while we look: the local variable and getrefcount's argument.
_OURS = 2
# How long a check may keep an old policy before we stop waiting and drop it the plain way.
HOLD_LIMIT_S = 10.0


class PolicyRetirement:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[CompiledPolicy | threading.Event] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def retire(self, policy: CompiledPolicy) -> None:
        """Take over the caller's reference (the caller must not keep one)."""
        self._ensure_thread()
        self._queue.put(policy)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """True once every policy handed over before this call has been dealt with."""
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
            policy = self._queue.get()
            if isinstance(policy, threading.Event):
                policy.set()
                continue
            deadline = time.monotonic() + HOLD_LIMIT_S
            while sys.getrefcount(policy) > _OURS and time.monotonic() < deadline:
                time.sleep(0.05)
            if sys.getrefcount(policy) <= _OURS:
                for _ in policy.release_gradually():
                    time.sleep(0)  # a check waiting for the interpreter gets it here
            else:
                log.debug("generation %d still referenced after %.0f s: freed in one go",
                          policy.generation, HOLD_LIMIT_S)
            del policy
