"""The policy in force, and the one path by which it changes.

Every trigger (start, SIGHUP, the Reload RPC, the file watcher) calls
`PolicyStore.reload`, which validates and compiles the whole file *before*
swapping a single reference. Readers take `store.current` once per check and
keep using that object, so a check in flight finishes on the policy it
started with and no check ever sees a half-built or missing policy. A file
that fails to load leaves the last known good policy in force.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from ..engine import (CompiledPolicy, PolicyLoadError, Problem, SourceRef, compile_policy, parse_text,
                      read_rules_bytes)
from ..engine.diff import usernames_to_kick, usernames_to_kick_among

from .generations import ClockGenerations, Generations
from .retire import PolicyRetirement

if TYPE_CHECKING:
    from .state import StateDir

log = logging.getLogger("policyd.store")


@dataclass(frozen=True)
class ReloadOutcome:
    ok: bool
    generation: int
    problems: tuple[Problem, ...] = ()
    trigger: str = ""
    kicks: frozenset[str] = frozenset()  # identities the new generation took access from


@dataclass(frozen=True)
class PolicySwap:
    """What listeners hear after each successful swap (not after the first load)."""

    generation: int
    kicks: frozenset[str]
    previous: int = 0  # the generation it replaced
    digest: bytes = field(default=b"", compare=False)  # the new policy's content (PolicyStore.digest), not saved
    previous_digest: bytes = field(default=b"", compare=False)  # the replaced policy's, not saved


@dataclass(frozen=True)
class StreamStart:
    """What a Watch stream opens with (PolicyStore.open_stream)."""

    generation: int
    missed: frozenset[str] | None  # None: not provable here
    digest: bytes


# While a reload runs, a check thread waits at most this long for the interpreter
# lock (Python's default is 5 ms, and a check needs the lock several times).
RELOAD_SWITCH_INTERVAL_S = 0.001


@contextlib.contextmanager
def _checks_keep_running() -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, RELOAD_SWITCH_INTERVAL_S))
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


# Swaps remembered for brokers whose Watch stream was briefly down.
SWAP_HISTORY = 256

SwapListener = Callable[[PolicySwap], None]


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
    def __init__(self, rules_file: str, state: "StateDir | None" = None,
                 generations: Generations | None = None):
        self.rules_file = rules_file
        self.state = state                  # what survives a restart (server/state.py), if kept
        self.generations = generations or ClockGenerations()  # server/generations.py
        self._retirement = PolicyRetirement()  # frees replaced policies without stalling checks
        self.state_errors = 0               # saves of that state that failed
        self._lock = threading.Lock()  # serialises reloads; readers never take it
        self._policy: CompiledPolicy | None = None
        self._loaded_at = 0.0
        self._last_problems: tuple[Problem, ...] = ()
        self.reloads_ok = 0
        self.reloads_failed = 0
        self.reloads_unchanged = 0          # reloads of the bytes already in force: nothing swapped
        # For metrics (plain attributes, read without a lock).
        self.last_reload_seconds = 0.0      # daemon time of the last successful reload
        self.last_reload_ok = True          # False while the file on disk is rejected
        self.last_failure_at = 0.0          # unix time of the last rejected reload
        self.kicks_total = 0                # identities named in kick lists
        self.kick_errors = 0                # reloads whose kick list could not be computed
        self._listeners: list[SwapListener] = []
        self._listener_lock = threading.Lock()
        self._history: collections.deque[PolicySwap] = collections.deque(maxlen=SWAP_HISTORY)
        # Extra kick sources, e.g. identities whose certificate the new policy revokes (policyd.identity).
        self.kick_sources: list[Callable[[CompiledPolicy, CompiledPolicy], frozenset[str]]] = []
        # Set when the policy comes from elsewhere (policyd.fleet: etcd) and only arrives by install().
        self.follows: str | None = None
        self.source_detail: Callable[[], str] = lambda: ""
        # Kicks between two generations that this process never swapped between (a
        # broker returning from another daemon or before this one started), worked out
        # from the policy source's own history (policyd.fleet: etcd); None: unprovable.
        self.missed_from_source: Callable[[int, int], frozenset[str] | None] | None = None
        self.replays_incomplete = 0         # returning brokers whose missed kicks could not be proven

    @property
    def current(self) -> CompiledPolicy:
        policy = self._policy
        if policy is None:  # serve() loads before it listens; this is a programming error
            raise RuntimeError("no policy loaded")
        return policy

    def start(self) -> ReloadOutcome:
        """The first load. With a state directory, the policy in force before the
        restart comes first: if the rules file is rejected it stays in force (last
        known good, reported like any rejected reload), and if the file changed,
        the swap is an ordinary one whose kicks returning brokers are replayed."""
        saved = self.state.load() if self.state is not None else None
        if saved is not None:
            try:
                previous = compile_policy(parse_text(saved.data, self.rules_file))
            except PolicyLoadError as exc:  # e.g. saved by a version that accepted more
                log.error("the saved policy of generation %d does not load any more, starting without "
                          "it: %s", saved.generation, exc)
            else:
                with self._lock:
                    self.generations.resumed(saved.generation)
                    self._policy = previous.with_generation(saved.generation)
                    self._loaded_at = time.time()
                    self._history.extend(saved.swaps)
                log.info("resuming from the saved state: generation %d (sha256 %s), %d swaps remembered",
                         saved.generation, previous.source_sha256[:12], len(saved.swaps))
                if self._file_sha256() == previous.source_sha256:
                    # The saved policy is the file: keep its generation, so brokers' caches stay valid.
                    self.reloads_ok += 1
                    log.info("policy generation %d resumed from %s: unchanged since the restart",
                             saved.generation, self.rules_file)
                    return ReloadOutcome(True, saved.generation, (), "start")
        return self.reload("start")

    def _file_sha256(self) -> str | None:
        try:
            return hashlib.sha256(read_rules_bytes(self.rules_file)).hexdigest()
        except PolicyLoadError:
            return None  # reload() reports it

    @property
    def has_policy(self) -> bool:
        return self._policy is not None

    def reload(self, trigger: str, quiet_failure: bool = False) -> ReloadOutcome:
        """Load, validate, swap. `quiet_failure`: a rejected file is neither
        recorded nor logged nor counted (the file watcher's first look at a
        file that may still be being written; it asks again, loudly, once the
        file has stayed unchanged). Bytes identical to the policy in force keep
        its generation: no swap, no kicks, no cache of any broker flushed."""
        if self.follows is not None:
            generation = self._policy.generation if self._policy else 0
            return ReloadOutcome(False, generation, (Problem(SourceRef(self.follows, 0, 0, ""), (
                "the policy follows etcd: change it with `policyd push` or `policyd device`")),), trigger)
        with self._lock, _checks_keep_running():
            started = time.perf_counter()
            try:
                data = read_rules_bytes(self.rules_file)
                if self._policy is not None and hashlib.sha256(data).hexdigest() == self._policy.source_sha256:
                    return self._unchanged(trigger)
                candidate = compile_policy(parse_text(data, self.rules_file, interruptible=True))
            except PolicyLoadError as exc:
                if quiet_failure:
                    return ReloadOutcome(False, self._policy.generation if self._policy else 0,
                                         tuple(exc.problems), trigger)
                self._last_problems = tuple(exc.problems)
                self.reloads_failed += 1
                self.last_reload_ok = False
                self.last_failure_at = time.time()
                generation = self._policy.generation if self._policy else 0
                log.error("reload (%s) rejected, keeping generation %d: %s", trigger, generation, exc)
                return ReloadOutcome(False, generation, tuple(exc.problems), trigger)
            old = self._policy
            policy = candidate.with_generation(
                self.generations.next_after(self._policy.generation if self._policy else 0))
            self._policy = policy  # the atomic swap
            self._loaded_at = time.time()
            self._last_problems = ()
            self.reloads_ok += 1
            self.last_reload_ok = True
            swapped_ms = (time.perf_counter() - started) * 1000
            # After the swap: checks already run on the new policy meanwhile.
            kicks = self._kicks(old, policy)
            self.kicks_total += len(kicks)
            self.last_reload_seconds = time.perf_counter() - started
            log.info("policy generation %d loaded (%s) from %s: %d identities, %d rules, sha256 %s, "
                     "users read by %s, swapped in %.1f ms, %d to kick%s", policy.generation, trigger,
                     self.rules_file, policy.identity_count, policy.rule_count, policy.source_sha256[:12],
                     policy.reader, swapped_ms, len(kicks), _some(kicks))
            if old is not None:
                swap = PolicySwap(policy.generation, kicks, old.generation, self.digest(policy), self.digest(old))
                self._history.append(swap)
                self._notify(swap)
            self._save_state(data, policy.generation)
            if old is not None:
                self._retirement.retire(old)
                del old  # the retirement thread's reference is now the last one
            return ReloadOutcome(True, policy.generation, (), trigger, kicks)

    def install(self, policy: CompiledPolicy, trigger: str, changed: "Iterable[str] | None" = None) -> ReloadOutcome:
        """Swap in a policy built elsewhere (policyd.fleet: etcd), keeping its generation.

        The same swap, kicks and broker events as reload(); `changed`: the only identities
        that can differ from the policy in force (one device changed), None: any."""
        with self._lock:
            started = time.perf_counter()
            old = self._policy
            self._policy = policy
            self._loaded_at = time.time()
            self._last_problems = ()
            self.reloads_ok += 1
            self.last_reload_ok = True
            if old is None:
                kicks: frozenset[str] = frozenset()
            elif changed is None:
                kicks = self._kicks(old, policy)
            else:
                kicks = usernames_to_kick_among(old, policy, changed)
            self.kicks_total += len(kicks)
            self.last_reload_seconds = time.perf_counter() - started
            log.info("policy generation %d in force (%s): %d identities, %d rules, %d to kick%s",
                     policy.generation, trigger, policy.identity_count, policy.rule_count, len(kicks),
                     _some(kicks))
            if old is not None:
                swap = PolicySwap(policy.generation, kicks, old.generation, self.digest(policy), self.digest(old))
                self._history.append(swap)
                self._notify(swap)
                self._retirement.retire(old)
                del old
            return ReloadOutcome(True, policy.generation, (), trigger, kicks)

    def _unchanged(self, trigger: str) -> ReloadOutcome:
        """The file holds the policy in force (a SIGHUP without an edit, a file restored
        after a rejected edit): nothing to swap; a rejected edit is no longer the news."""
        generation = self._policy.generation
        if not self.last_reload_ok:
            log.info("reload (%s): %s is the policy in force again (generation %d); the rejected "
                     "edit is gone", trigger, self.rules_file, generation)
        else:
            log.info("reload (%s): %s unchanged, generation %d kept", trigger, self.rules_file, generation)
        self._last_problems = ()
        self.last_reload_ok = True
        self.reloads_unchanged += 1
        return ReloadOutcome(True, generation, (), trigger)

    def _save_state(self, data: bytes, generation: int) -> None:
        """After the swap and the kicks: a slow disk delays nothing that matters."""
        if self.state is None:
            return
        try:
            self.state.save(data, generation, self._history)
        except OSError as exc:  # the new policy is in force; only a restart would not know it
            self.state_errors += 1
            log.error("cannot save the state to %s (%s): a restart would resume from an older "
                      "policy", self.state.path, exc)

    def _kicks(self, old: CompiledPolicy | None, new: CompiledPolicy) -> frozenset[str]:
        if old is None:
            return frozenset()
        try:
            kicks = usernames_to_kick(old, new)
            for source in self.kick_sources:
                kicks |= source(old, new)
            return kicks
        except Exception:  # the new policy is in force either way; only the kicks are lost
            self.kick_errors += 1
            log.exception("cannot work out whom generation %d takes access from: nobody is "
                          "disconnected, every check is answered by the new policy", new.generation)
            return frozenset()

    def add_listener(self, listener: SwapListener) -> None:
        """Called, under the reload lock and so in generation order, after each swap.

        A listener must not block (queue the event and return) and must not
        call reload().
        """
        with self._listener_lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: SwapListener) -> None:
        with self._listener_lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def subscribe(self, listener: SwapListener, known_generation: int = 0) -> tuple[int, frozenset[str] | None]:
        """add_listener, plus what a returning subscriber missed, in one step.

        Returns the generation in force and every identity kicked by the swaps
        after `known_generation` — or None when those are not all remembered
        (too old, or a previous daemon's). Taken under the reload lock, so each
        swap reaches the subscriber exactly once: in this answer or as an event.
        """
        with self._lock:
            return self._subscribe(listener, known_generation)

    def _subscribe(self, listener: SwapListener, known_generation: int) -> tuple[int, frozenset[str] | None]:
        self.add_listener(listener)
        generation = self._policy.generation if self._policy else 0
        if known_generation == generation:
            return generation, frozenset()
        history = list(self._history)
        for i, swap in enumerate(history):
            if swap.previous == known_generation:
                return generation, frozenset().union(*(s.kicks for s in history[i:]))
        return generation, None

    def digest(self, policy: CompiledPolicy | None) -> bytes:
        """The content of `policy` for a returning broker (PolicyEvent.policy_digest): the
        rules file's SHA-256; nothing when the policy follows another source, whose own
        device changes a file digest would not name."""
        if policy is None or self.follows is not None or not policy.source_sha256:
            return b""
        return bytes.fromhex(policy.source_sha256)

    def open_stream(self, listener: SwapListener, known_generation: int = 0,
                    known_digest: bytes = b"") -> StreamStart:
        """subscribe(), plus the digest of the generation in force, read in the same step.
        A broker whose last policy had the content now in force lost nothing, even from
        a generation this process never served (a restart, another daemon): the kicks a
        change implies are those between the policy it had and the policy in force."""
        with self._lock:
            generation, missed = self._subscribe(listener, known_generation)
            digest = self.digest(self._policy)
            if missed is None and known_generation and known_digest:
                missed = frozenset() if known_digest == digest else self._since_content(known_digest)
        return StreamStart(generation, missed, digest)

    def _since_content(self, digest: bytes) -> frozenset[str] | None:
        """The kicks of every swap since this process last had that content in force (a
        name that lost access between that policy and the one in force lost it in one of
        them), or None."""
        history = list(self._history)
        for i in range(len(history) - 1, -1, -1):
            if history[i].previous_digest == digest:
                return frozenset().union(*(s.kicks for s in history[i:]))
        return None

    def missed_between(self, known_generation: int, generation: int) -> frozenset[str] | None:
        """subscribe()'s None case: ask the policy source, outside the reload lock (it may
        do I/O); the subscriber already hears every swap after `generation`."""
        if self.missed_from_source is None or not known_generation:
            return None
        try:
            return self.missed_from_source(known_generation, generation)
        except Exception:  # unprovable: the caller takes the safe way
            log.exception("cannot work out the kicks between generations %d and %d", known_generation,
                          generation)
            return None

    @property
    def listener_count(self) -> int:
        return len(self._listeners)

    def _notify(self, swap: PolicySwap) -> None:
        with self._listener_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(swap)
            except Exception:  # one broken subscriber must not stop the others
                log.exception("policy swap listener failed")

    def status(self) -> StoreStatus:
        policy = self._policy
        return StoreStatus(
            generation=policy.generation if policy else 0,
            rules_file=f"{self.rules_file} ({self.source_detail()})" if self.follows else self.rules_file,
            source_sha256=policy.source_sha256 if policy else "",
            loaded_at=self._loaded_at,
            last_problems=self._last_problems,
            identities=policy.identity_count if policy else 0,
            rules=policy.rule_count if policy else 0,
        )


def _some(names: frozenset[str], shown: int = 5) -> str:
    if not names:
        return ""
    first = sorted(names)[:shown]
    more = f" (+{len(names) - shown} more)" if len(names) > shown else ""
    return ": " + ", ".join(first) + more
