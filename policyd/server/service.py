"""gRPC servicers: thin adapters between the wire contract and the engine."""

from __future__ import annotations

import collections
import logging
import threading

import grpc

from .. import __version__
from ..engine import Access, Problem, Request
from ..v1 import policy_pb2 as pb
from ..v1 import policy_pb2_grpc as pb_grpc
from .ratelimit import RateLimitedLog
from .store import PolicyStore

log = logging.getLogger("policyd.service")
decisions_log = logging.getLogger("policyd.decisions")


class Counters:
    """Decision counts by outcome; a lock-free-enough dict behind a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()

    def add(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class PolicyService(pb_grpc.PolicyServicer):
    """Answers the broker's questions. Any failure answers deny."""

    def __init__(self, store: PolicyStore, cache_ttl_ms: int):
        self.store = store
        self.cache_ttl_ms = cache_ttl_ms
        self.counters = Counters()
        self._errors = RateLimitedLog(log, interval_s=10.0)

    def CheckAcl(self, request: pb.CheckAclRequest, context: grpc.ServicerContext) -> pb.CheckAclResponse:
        policy = self.store.current  # one policy for the whole check
        try:
            access = Access(request.access)
        except ValueError:
            self.counters.add("error")
            self._errors.warning("bad-access", "CheckAcl with unknown access value %d: denied", request.access)
            return pb.CheckAclResponse(result=pb.RESULT_DENY, generation=policy.generation, rule="bad-request")
        username = request.username if request.has_username else None
        try:
            decision = policy.decide(Request(username, request.client_id, request.topic, access))
        except Exception:  # never let a bug become an allow, or an unanswered broker
            self.counters.add("error")
            self._errors.exception("engine", "engine failure while deciding: denied")
            return pb.CheckAclResponse(result=pb.RESULT_DENY, generation=policy.generation, rule="engine-error")
        outcome = "allow" if decision.allowed else "deny"
        self.counters.add(f"{outcome}.{access.name.lower()}")
        if not decision.allowed and decisions_log.isEnabledFor(logging.DEBUG):
            decisions_log.debug("deny %s user=%s client=%s topic=%s gen=%d: %s", access.name.lower(),
                                _printable(username), _printable(request.client_id),
                                _printable(request.topic), policy.generation, decision.describe())
        return pb.CheckAclResponse(
            result=pb.RESULT_ALLOW if decision.allowed else pb.RESULT_DENY,
            generation=policy.generation,
            cache_ttl_ms=self.cache_ttl_ms,
            rule=str(decision.rule) if decision.rule is not None else decision.reason,
        )


class AdminService(pb_grpc.AdminServicer):
    """Reload and Status. Served only on the admin listener, never the broker's."""

    def __init__(self, store: PolicyStore):
        self.store = store

    def Reload(self, request: pb.ReloadRequest, context: grpc.ServicerContext) -> pb.ReloadResponse:
        outcome = self.store.reload("rpc")
        return pb.ReloadResponse(ok=outcome.ok, generation=outcome.generation,
                                 problems=[problem_to_pb(p) for p in outcome.problems])

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusResponse:
        st = self.store.status()
        return pb.StatusResponse(
            generation=st.generation, rules_file=st.rules_file, source_sha256=st.source_sha256,
            loaded_at=st.loaded_at, last_error=[problem_to_pb(p) for p in st.last_problems],
            identities=st.identities, rules=st.rules, version=__version__)


def problem_to_pb(problem: Problem) -> pb.PolicyProblem:
    r = problem.ref
    return pb.PolicyProblem(file=r.file, line=r.line, column=r.column, key=r.key,
                            message=f"{problem.severity}: {problem.message}")


def _printable(value: bytes | str | None, limit: int = 200) -> str:
    """A log-safe rendering of a client-supplied value (escaped, capped)."""
    if value is None:
        return "<anonymous>"
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    text = value[:limit].decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return repr(text) + ("…" if len(value) > limit else "")
