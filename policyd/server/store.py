"""The policy in force, and the one path by which it changes.

Every trigger (start, SIGHUP, the Reload RPC, later the file watcher) calls
`PolicyStore.reload`, which validates and compiles the whole file *before*
swapping a single reference. Readers take `store.current` once per check and
keep using that object, so a check in flight finishes on the policy it
started with and no check ever sees a half-built or missing policy. A file
that fails to load leaves the last known good policy in force.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from ..engine import CompiledPolicy, PolicyLoadError, Problem, load_policy

log = logging.getLogger("policyd.store")


@dataclass(frozen=True)
class ReloadOutcome:
    ok: bool
    generation: int
    problems: tuple[Problem, ...] = ()
    trigger: str = ""


@dataclass
class StoreStatus:
    generation: int
    rules_file: str
    source_sha256: str
    loaded_at: float
    last_problems: tuple[Problem, ...] = field(default=())
    identities: int = 0
    rules: int = 0


class PolicyStore:
    def __init__(self, rules_file: str):
        self.rules_file = rules_file
        self._lock = threading.Lock()  # serialises reloads; readers never take it
        self._policy: CompiledPolicy | None = None
        self._loaded_at = 0.0
        self._last_problems: tuple[Problem, ...] = ()
        self.reloads_ok = 0
        self.reloads_failed = 0

    @property
    def current(self) -> CompiledPolicy:
        policy = self._policy
        if policy is None:  # serve() loads before it listens; this is a programming error
            raise RuntimeError("no policy loaded")
        return policy

    def _next_generation(self) -> int:
        # Monotonic within a process and, being based on the wall clock in ms,
        # also higher after a daemon restart: a shim never mistakes new rules
        # for an old generation it has cached.
        previous = self._policy.generation if self._policy else 0
        return max(previous + 1, int(time.time() * 1000))

    def reload(self, trigger: str) -> ReloadOutcome:
        with self._lock:
            started = time.perf_counter()
            try:
                candidate = load_policy(self.rules_file)
            except PolicyLoadError as exc:
                self._last_problems = tuple(exc.problems)
                self.reloads_failed += 1
                generation = self._policy.generation if self._policy else 0
                log.error("reload (%s) rejected, keeping generation %d: %s", trigger, generation, exc)
                return ReloadOutcome(False, generation, tuple(exc.problems), trigger)
            policy = candidate.with_generation(self._next_generation())
            self._policy = policy  # the atomic swap
            self._loaded_at = time.time()
            self._last_problems = ()
            self.reloads_ok += 1
            elapsed_ms = (time.perf_counter() - started) * 1000
            log.info("policy generation %d loaded (%s) from %s: %d identities, %d rules, sha256 %s, %.1f ms",
                     policy.generation, trigger, self.rules_file, policy.identity_count,
                     policy.rule_count, policy.source_sha256[:12], elapsed_ms)
            return ReloadOutcome(True, policy.generation, (), trigger)

    def status(self) -> StoreStatus:
        policy = self._policy
        return StoreStatus(
            generation=policy.generation if policy else 0,
            rules_file=self.rules_file,
            source_sha256=policy.source_sha256 if policy else "",
            loaded_at=self._loaded_at,
            last_problems=self._last_problems,
            identities=policy.identity_count if policy else 0,
            rules=policy.rule_count if policy else 0,
        )
