"""A fake policyd answering the real plugin with malformed, oversized, wrong or slow answers.

The fake is a real gRPC server on a unix socket (grpcio, generic handler, raw bytes out), so the
plugin's whole path runs: HTTP/2, the size limit of the channel, protobuf-c decoding and the
mapping of the answer. Every bad answer must be denied, counted and logged; the plugin must keep
running and answer normally as soon as the server does.
"""

from __future__ import annotations

import sys
import time
from concurrent import futures
from types import SimpleNamespace

import grpc
import pytest
from harness import ROOT, wait_for
from shimlib import ALLOW, DENIED, READ, SUBSCRIBE, WRITE

from policyd.v1 import policy_pb2 as pb

sys.path.insert(0, str(ROOT / "bench"))
from reliability import record  # noqa: E402

ALLOW_ANSWER = pb.CheckAclResponse(result=pb.RESULT_ALLOW, generation=1).SerializeToString()


class FakePolicy:
    """Answers CheckAcl with whatever `answer()` returns (bytes) or raises; counts calls."""

    def __init__(self, sock_path: str):
        self.calls = 0
        self.answer = lambda context: ALLOW_ANSWER
        handler = grpc.method_handlers_generic_handler("policyd.v1.Policy", {
            "CheckAcl": grpc.unary_unary_rpc_method_handler(
                self._check, request_deserializer=bytes, response_serializer=bytes),
        })
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler])
        self.server.add_insecure_port(f"unix:{sock_path}")
        self.server.start()
        self.address = f"unix:{sock_path}"

    def _check(self, request: bytes, context) -> bytes:
        self.calls += 1
        return self.answer(context)

    def stop(self) -> None:
        self.server.stop(0)


def _abort(context, code):
    context.abort(code, "fake server refuses")


def _slow(context):
    time.sleep(0.6)
    return ALLOW_ANSWER


# name: (answer function, stats counter that must count it)
BAD_ANSWERS = {
    "unknown-result-value": (lambda c: pb.CheckAclResponse(result=7).SerializeToString(), "protocol"),
    "result-unspecified": (lambda c: pb.CheckAclResponse(generation=3).SerializeToString(), "protocol"),
    "empty-message": (lambda c: b"", "protocol"),
    "garbage-bytes": (lambda c: b"\xff" * 64, "protocol"),
    "truncated-message": (lambda c: ALLOW_ANSWER[:-1] + b"\x12\x05ab", "protocol"),
    "wrong-message-type": (lambda c: pb.WatchRequest(broker_id="x" * 40).SerializeToString(), "protocol"),
    "oversized-rule-1MiB": (lambda c: pb.CheckAclResponse(result=pb.RESULT_ALLOW,
                                                          rule="r" * (1 << 20)).SerializeToString(), "status"),
    "status-permission-denied": (lambda c: _abort(c, grpc.StatusCode.PERMISSION_DENIED), "status"),
    "status-internal": (lambda c: _abort(c, grpc.StatusCode.INTERNAL), "status"),
    "slow-answer-600ms": (_slow, "deadline"),
}


@pytest.fixture
def fake(workdir):
    server = FakePolicy(str(workdir / "fake.sock"))
    yield server
    server.stop()


@pytest.mark.parametrize("kind", sorted(BAD_ANSWERS))
def test_bad_answer_is_denied_counted_and_survived(fake, make_shim, kind):
    answer, counter = BAD_ANSWERS[kind]
    fake.answer = answer
    shim = make_shim(SimpleNamespace(address=fake.address), timeout_ms=200, breaker_threshold=1000)
    dev = shim.client("c1", "Device123")
    for i in range(5):
        assert shim.check(dev, WRITE, f"/device/Device123/t{i}") == DENIED
    fake.answer = lambda context: ALLOW_ANSWER
    wait_for(lambda: shim.check(dev, WRITE, "/device/Device123/back") == ALLOW, 5, "normal answers again")
    stats = shim.close()
    assert stats[counter] >= 5, stats
    assert stats["allowed"] >= 1 and stats["internal"] == 0, stats
    logs = shim.logs()
    failures = [line for line in logs if f"check failed ({counter}:" in line]
    assert 1 <= len(failures) < 5, logs     # logged, and rate-limited (5 failures, fewer lines)
    assert max(len(line) for line in logs) < 4096, "a log line grew with the answer"
    _record_bad_answer(kind, counter)


def _record_bad_answer(kind: str, counter: str) -> None:
    record(f"hostile-03-answer-{kind}", row=f"daemon answer: {kind}",
           how="fake gRPC Policy server (grpcio, raw bytes) in front of the real plugin",
           test=f"tests/shim/test_hostile_server.py::test_bad_answer_is_denied_counted_and_survived[{kind}]",
           happened=f"5/5 checks denied, counted as `{counter}` errors, logged (rate-limited: fewer "
                    "lines than failures); plugin answered normally once the server did",
           lost="n/a", denied_delivered=0)


def test_oversized_cache_scope_is_not_used(fake, make_shim):
    fake.answer = lambda c: pb.CheckAclResponse(result=pb.RESULT_ALLOW, generation=1, cache_ttl_ms=60000,
                                                cache_scope=b"/device/Device123/" + b"x" * 60000).SerializeToString()
    shim = make_shim(SimpleNamespace(address=fake.address))
    dev = shim.client("c1", "Device123")
    assert shim.allowed(dev, WRITE, "/device/Device123/a")
    assert shim.allowed(dev, WRITE, "/device/Device123/a")       # cached for this topic
    assert fake.calls == 1
    fake.answer = lambda c: pb.CheckAclResponse(result=pb.RESULT_DENY, generation=1).SerializeToString()
    assert not shim.allowed(dev, WRITE, "/device/Device123/b")   # the huge scope was not trusted
    assert fake.calls == 2
    shim.close()
    record("hostile-04-answer-huge-scope", row="daemon answer: 60 KB cache_scope",
           how="fake server returns ALLOW with a 60 KB scope and a 60 s TTL",
           test="tests/shim/test_hostile_server.py::test_oversized_cache_scope_is_not_used",
           happened="the answer is used for its own topic only; the scope is ignored, the next topic is asked",
           lost="n/a", denied_delivered=0)


def test_scopes_sent_ahead_only_ever_cache_reads_writes_and_exact_subscriptions(fake, make_shim):
    """Grants for other accesses, empty, oversized, or with a disconnect are never cached; a
    SUBSCRIBE grant answers a subscription to exactly its filter, never one it covers."""
    bad = [pb.ScopeGrant(access=pb.ACCESS_SUBSCRIBE, scope=b"/device/Device123/#"),
           pb.ScopeGrant(access=pb.ACCESS_UNSUBSCRIBE, scope=b"#"),
           pb.ScopeGrant(access=7, scope=b"#"), pb.ScopeGrant(access=pb.ACCESS_READ, scope=b""),
           pb.ScopeGrant(access=pb.ACCESS_WRITE, scope=b"x/" + b"y" * 60000)]
    fake.answer = lambda c: pb.CheckAclResponse(result=pb.RESULT_ALLOW, generation=1, cache_ttl_ms=60000,
                                                more_scopes=bad).SerializeToString()
    shim = make_shim(SimpleNamespace(address=fake.address))
    dev = shim.client("c1", "Device123")
    assert shim.allowed(dev, WRITE, "/device/Device123/a")
    fake.answer = lambda c: pb.CheckAclResponse(result=pb.RESULT_DENY, generation=1).SerializeToString()
    assert shim.allowed(dev, SUBSCRIBE, "/device/Device123/#")     # the grant, exactly
    assert fake.calls == 1
    for access, topic in [(SUBSCRIBE, "/device/Device123/a"), (SUBSCRIBE, "/device/Device123/+"),
                          (READ, "/device/Device123/a"), (READ, "x/" + "y" * 60000),
                          (WRITE, "x/" + "y" * 60000), (READ, "a")]:
        assert not shim.allowed(dev, access, topic)
    assert fake.calls == 7
    other = shim.client("c2", "Device124")
    fake.answer = lambda c: pb.CheckAclResponse(
        result=pb.RESULT_DENY, generation=1, cache_ttl_ms=60000, disconnect=True,
        more_scopes=[pb.ScopeGrant(access=pb.ACCESS_WRITE, scope=b"#")]).SerializeToString()
    assert not shim.allowed(other, READ, "/device/Device124/a")
    fake.answer = lambda c: pb.CheckAclResponse(result=pb.RESULT_DENY, generation=1).SerializeToString()
    same_identity = shim.client("c2", "Device124")    # not the doomed connection: asked, not served '#'
    assert not shim.allowed(same_identity, WRITE, "/device/Device124/a")
    assert fake.calls == 9
    shim.close()
