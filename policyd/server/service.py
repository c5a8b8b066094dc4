"""gRPC servicers: thin adapters between the wire contract and the engine."""

from __future__ import annotations

import collections
import logging
import threading
import time

import grpc

from .. import __version__
from ..engine import Access, Problem, Request
from ..engine.policy import Identity
from ..engine.scope import cache_scope, more_scopes
from ..identity.authenticate import Authenticator, password_kicks
from ..identity.verify import checked_client
from ..v1 import policy_pb2 as pb
from ..v1 import policy_pb2_grpc as pb_grpc
from . import watch_stream
from .ratelimit import RateLimitedLog
from .shims import STAT_FIELDS, ShimRegistry, report_stats
from .store import PolicyStore

log = logging.getLogger("policyd.service")
decisions_log = logging.getLogger("policyd.decisions")


# Reloads in a row a check may race before it is denied (each retry takes the policy in force).
RETIRED_RETRIES = 3


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
        self.shims = ShimRegistry()  # latest ShimStats per broker (ReportStats)
        # Operations hooks, set by serve.py (issue 7); all off by default.
        self.latency = None       # prometheus Histogram
        self.decision_log = None  # logs.DecisionLog
        self.dry_run = False      # answer allow, count and log what would be denied
        self._dry_run_log = RateLimitedLog(logging.getLogger("policyd.dryrun"), interval_s=1.0)
        # Identity mode (issue 6): CONNECT answers, and each identity's certificate attributes.
        self.authenticator = Authenticator(store, self.counters)
        if hasattr(store, "kick_sources"):  # a reload that removes a password kicks its client
            store.kick_sources.append(password_kicks)

    def CheckAcl(self, request: pb.CheckAclRequest, context: grpc.ServicerContext) -> pb.CheckAclResponse:
        started = time.perf_counter()
        answer = self._check(request)
        if self.latency is not None:
            self.latency.observe(time.perf_counter() - started)
        return answer

    def Authenticate(self, request: pb.AuthenticateRequest,
                     context: grpc.ServicerContext) -> pb.AuthenticateResponse:
        """Identity mode: who a connecting client is, or why it may not connect (policyd.identity)."""
        answer, attributes = self.authenticator.accept(request, context.peer())
        if request.want_scopes and answer.result == pb.RESULT_ALLOW:
            self._scopes_at_connect(request, answer, attributes)
        return answer

    def _scopes_at_connect(self, request: pb.AuthenticateRequest, answer: pb.AuthenticateResponse,
                           attributes) -> None:
        """What a first check's more_scopes would bring, for the identity just accepted: its
        first SUBSCRIBE, publish and delivery then need no call on the broker's thread."""
        policy = self.store.current
        if policy.generation != answer.generation or policy.retired:
            return  # a reload in between: the first check asks (and brings them) instead
        subject = Request(answer.username, request.client_id, b"", Access.SUBSCRIBE, attributes)
        ident = Identity.of(answer.username, request.client_id)
        scopes = self._more_scopes(policy, subject, ident, policy.stages(ident, attributes))
        if policy.retired:  # read after the scopes, as _decided does: they read the tables too
            return
        answer.scopes.extend(scopes)
        if answer.scopes:
            answer.cache_ttl_ms = self.cache_ttl_ms

    def Watch(self, request: pb.WatchRequest, context: grpc.ServicerContext):
        """Generations and kicks for the shim's watch thread (watch_stream.py)."""
        return watch_stream.watch(self.store, request, context)

    def _check(self, request: pb.CheckAclRequest) -> pb.CheckAclResponse:
        policy = self.store.current  # one policy for the whole check
        try:
            access = Access(request.access)
        except ValueError:
            self.counters.add("error")
            self._log_decision(request, "error", "unknown", "bad-request", policy.generation)
            self._errors.warning("bad-access", "CheckAcl with unknown access value %d: denied", request.access)
            return pb.CheckAclResponse(result=pb.RESULT_DENY, generation=policy.generation, rule="bad-request")
        username = request.username if request.has_username else None
        try:
            policy, refusal, decision, scope, more = self._decided(request, username, access)
            if refusal is not None:
                return self._refused(request, access, refusal, policy.generation)
        except Exception:  # never let a bug become an allow, or an unanswered broker
            self.counters.add("error")
            self._log_decision(request, "error", access.name.lower(), "engine-error", policy.generation)
            self._errors.exception("engine", "engine failure while deciding: denied")
            return pb.CheckAclResponse(result=pb.RESULT_DENY, generation=policy.generation, rule="engine-error")
        allowed = decision.allowed or self.dry_run
        outcome = "allow" if allowed else "deny"
        self.counters.add(f"{outcome}.{access.name.lower()}")
        if self.decision_log is not None or allowed != decision.allowed:
            self._observe(request, access, decision, policy.generation)
        if not decision.allowed and decisions_log.isEnabledFor(logging.DEBUG):
            decisions_log.debug("deny %s user=%s client=%s topic=%s gen=%d: %s", access.name.lower(),
                                _printable(username), _printable(request.client_id),
                                _printable(request.topic), policy.generation, decision.describe())
        return pb.CheckAclResponse(
            result=pb.RESULT_ALLOW if allowed else pb.RESULT_DENY,
            generation=policy.generation,
            cache_ttl_ms=self.cache_ttl_ms,
            rule=str(decision.rule) if decision.rule is not None else decision.reason,
            cache_scope=scope if allowed == decision.allowed else b"",
            disconnect=decision.ends_session and not allowed,
            more_scopes=more if not decision.ends_session else [],
        )

    def _refused(self, request: pb.CheckAclRequest, access: Access, refused, generation: int) -> pb.CheckAclResponse:
        """The connection itself is not acceptable (revoked, mismatched): deny and end it.
        Not affected by --dry-run: a dry run tries out rules, not revocations."""
        rule = f"connection-refused: {refused.kind}"
        self.counters.add(f"deny.{access.name.lower()}")
        self.counters.add(f"refused.{refused.kind}")
        self._log_decision(request, "deny", access.name.lower(), rule, generation)
        self._errors.warning(f"refused-{refused.kind}", "check for user=%s client=%s denied and its connection "
                             "ended: %s", _Printable(_username(request)), _Printable(request.client_id), refused)
        return pb.CheckAclResponse(result=pb.RESULT_DENY, generation=generation, rule=rule, disconnect=True)

    def _decided(self, request: pb.CheckAclRequest, username, access: Access):
        """(policy, refusal, decision, cache scope, scopes sent ahead) from a policy that was in
        force throughout.
        A check that raced a reload may hold the policy just retired (server/retire.py): that
        one answers RETIRED, and the question goes to the policy in force instead."""
        for _ in range(RETIRED_RETRIES):
            policy = self.store.current
            client = checked_client(request, policy)
            if client.refusal is not None:
                return policy, client.refusal, None, b"", []
            subject = Request(username, request.client_id, request.topic, access, client.attributes)
            # Once for the answer and every scope probe (an UNSUBSCRIBE needs neither).
            ident = Identity.of(username, request.client_id) if access is not Access.UNSUBSCRIBE else None
            stages = policy.stages(ident, client.attributes) if ident is not None else None
            decision = policy.decide(subject, ident, stages)
            scope = (self._scope(policy, subject, decision, ident, stages) if decision.allowed or not self.dry_run
                     else b"")
            more = self._more_scopes(policy, subject, ident, stages) if request.want_scopes else []
            if not policy.retired:  # read after the scopes: they read the tables too
                return policy, None, decision, scope, more
        self._errors.warning("retired", "a check kept meeting retired policies: denied")
        return policy, None, decision, b"", []

    def _more_scopes(self, policy, subject: Request, ident: Identity | None, stages) -> list[pb.ScopeGrant]:
        """The client's allows under filters, for a shim that holds none of its answers yet.
        None under --dry-run (its answers are not the policy's) or without caching."""
        if self.cache_ttl_ms <= 0 or self.dry_run:
            return []
        try:
            found = more_scopes(policy, subject, ident=ident, stages=stages)
        except Exception:  # a missing scope only costs round trips; a wrong one never happens
            self._errors.exception("scope", "scopes sent ahead failed: none sent")
            return []
        return [pb.ScopeGrant(access=int(access), scope=scope.encode("utf-8")) for access, scope in found]

    def _scope(self, policy, subject: Request, decision, ident: Identity | None, stages) -> bytes:
        """The filter the answer provably holds for (empty: this topic only)."""
        if self.cache_ttl_ms <= 0:
            return b""
        try:
            scope = cache_scope(policy, subject, decision, ident, stages)
        except Exception:  # a missing scope only costs round trips; a wrong one never happens
            self._errors.exception("scope", "cache scope computation failed: answer cached per topic")
            return b""
        return scope.encode("utf-8") if scope else b""

    def ReportStats(self, request: pb.ShimStats, context: grpc.ServicerContext) -> pb.ReportStatsResponse:
        stats = report_stats(request)
        self.shims.update(request.broker_id[:128], context.peer(), stats)
        log.debug("shim stats from broker %s: %s", _printable(request.broker_id, 128),
                  " ".join(f"{k}={int(stats[k])}" for k in STAT_FIELDS))
        return pb.ReportStatsResponse()

    def _observe(self, request: pb.CheckAclRequest, access: Access, decision, generation: int) -> None:
        """Off the common path: the decision log, and dry-run's would-deny count and log line."""
        rule = str(decision.rule) if decision.rule is not None else decision.reason
        self._log_decision(request, decision.word, access.name.lower(), rule, generation)
        if self.dry_run and not decision.allowed:
            self.counters.add(f"would_deny.{access.name.lower()}")
            self._dry_run_log.warning("would-deny", "dry-run: would deny %s user=%s client=%s topic=%s: %s",
                                      access.name.lower(), _Printable(_username(request)),
                                      _Printable(request.client_id), _Printable(request.topic), rule)

    def _log_decision(self, request: pb.CheckAclRequest, result: str, access: str, rule: str,
                      generation: int) -> None:
        if self.decision_log is not None:
            self.decision_log.record(result=result, access=access, username=_username(request),
                                     client_id=request.client_id, topic=request.topic, rule=rule,
                                     generation=generation, dry_run=self.dry_run)


class _Printable:
    """_printable(value), computed only if a (rate-limited) log line is actually written."""

    __slots__ = ("value",)

    def __init__(self, value: bytes | None):
        self.value = value

    def __str__(self) -> str:
        return _printable(self.value)


def _username(request: pb.CheckAclRequest) -> bytes | None:
    return request.username if request.has_username else None


class AdminService(pb_grpc.AdminServicer):
    """Reload and Status. Served only on the admin listener, never the broker's."""

    def __init__(self, store: PolicyStore):
        self.store = store
        self.shims = lambda: None  # set by serve.py: the ShimRegistry fed by ReportStats
        self.dry_run = False

    def Reload(self, request: pb.ReloadRequest, context: grpc.ServicerContext) -> pb.ReloadResponse:
        outcome = self.store.reload("rpc")
        return pb.ReloadResponse(ok=outcome.ok, generation=outcome.generation,
                                 problems=[problem_to_pb(p) for p in outcome.problems])

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusResponse:
        st = self.store.status()
        return pb.StatusResponse(
            generation=st.generation, rules_file=st.rules_file, source_sha256=st.source_sha256,
            loaded_at=st.loaded_at, last_error=[problem_to_pb(p) for p in st.last_problems],
            identities=st.identities, rules=st.rules, version=__version__,
            shims=_shim_statuses(self.shims()), reloads_ok=getattr(self.store, "reloads_ok", 0),
            reloads_failed=getattr(self.store, "reloads_failed", 0), dry_run=self.dry_run)


    def Check(self, request: pb.AdminCheckRequest, context: grpc.ServicerContext) -> pb.AdminCheckResponse:
        policy = self.store.current
        try:
            access = Access(request.access)
        except ValueError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown access {request.access}")
        attributes: dict[str, tuple[str, ...]] = {}
        for attribute in request.attributes:
            attributes[attribute.name] = attributes.get(attribute.name, ()) + (attribute.value,)
        asked = Request(request.username if request.has_username else None, request.clientid, request.topic,
                        access, attributes)
        decision = policy.explain(asked) if request.explain else policy.decide(asked)
        return pb.AdminCheckResponse(
            allowed=decision.allowed, reason=decision.reason,
            rule=str(decision.rule) if decision.rule is not None else "",
            trace=[str(step) for step in decision.trace], generation=policy.generation, dry_run=self.dry_run)


def _shim_statuses(snapshot) -> list[pb.ShimStatus]:
    from .metrics import is_connected, shim_rows

    now = time.time()
    out = []
    for broker, stats, seen, up in shim_rows(snapshot):
        fields = {f.name: stats[f.name] for f in pb.ShimStats.DESCRIPTOR.fields if f.name in stats}
        out.append(pb.ShimStatus(stats=pb.ShimStats(**{**fields, "broker_id": broker}), last_seen=seen,
                                 connected=is_connected(seen, up, now)))
    return out


def problem_to_pb(problem: Problem) -> pb.PolicyProblem:
    r = problem.ref
    return pb.PolicyProblem(file=r.file, line=r.line, column=r.column, key=r.key, message=problem.message,
                            severity=problem.severity)


def _printable(value: bytes | str | None, limit: int = 200) -> str:
    """A log-safe rendering of a client-supplied value (escaped, capped)."""
    if value is None:
        return "<anonymous>"
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    text = value[:limit].decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return repr(text) + ("…" if len(value) > limit else "")
