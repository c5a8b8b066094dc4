"""The Watch thread in-process (stub broker, real daemon; `make test-asan` runs it under ASan)."""

import contextlib
import time
from concurrent import futures
from types import SimpleNamespace

import grpc

from harness import wait_for
from policyd.v1 import policy_pb2 as pb
from policyd.v1 import policy_pb2_grpc as pb_grpc
from shimlib import WRITE

RULES = """\
superusers: [admin]
users:
  Device123:
    - {topic: /device/%u/#, access: readwrite}
patterns:
  - {topic: /device/%u/#, access: readwrite}
"""
WITHOUT_DEVICE123 = RULES.replace("  Device123:\n    - {topic: /device/%u/#, access: readwrite}\n", "")


def ticking(shim, predicate, what: str, timeout: float = 10):
    """Runs the broker's TICK until predicate() holds, as the main loop would."""
    def step():
        shim.tick()
        return predicate()
    return wait_for(step, timeout, what, interval=0.01)


def announced(shim) -> bool:
    return any("announced by policyd" in line for line in shim.logs())


@contextlib.contextmanager
def fake_policyd(workdir, servicer):
    """A gRPC server on a unix socket answering as `servicer` does; yields its address holder."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_PolicyServicer_to_server(servicer, server)
    socket = workdir / "fake.sock"
    server.add_insecure_port(f"unix:{socket}")
    server.start()
    try:
        yield SimpleNamespace(address=f"unix:{socket}")
    finally:
        server.stop(0)


def reload(daemon, text: str) -> None:
    from harness import run_policyd

    daemon.rules.write_text(text)
    run_policyd("reload", "--address", daemon.admin_address)


def test_removed_identity_is_kicked_on_tick(make_daemon, make_shim, stub_so):
    daemon = make_daemon("--no-watch", rules=RULES)
    shim = make_shim(daemon)
    dev = shim.client("c1", "Device123")
    assert shim.allowed(dev, WRITE, "/device/Device123/t")      # connected, with a record
    ticking(shim, lambda: any("Watch stream open" in line for line in shim.logs()), "the stream")
    reload(daemon, WITHOUT_DEVICE123)
    time.sleep(0.5)  # the event has arrived, but broker calls wait for the main thread's TICK
    assert shim.stub.stub_kicks() == 0
    ticking(shim, lambda: shim.stub.stub_kicks() == 1, "the kick")
    assert any("disconnecting 1 client(s): the new policy took access from 1 name(s)" in line
               for line in shim.logs())
    time.sleep(0.2)
    shim.tick()
    assert shim.stub.stub_kicks() == 1  # once


def test_unrelated_reload_kicks_nobody_but_flushes_the_cache(make_daemon, make_shim):
    daemon = make_daemon("--no-watch", rules=RULES)
    shim = make_shim(daemon)
    dev = shim.client("c1", "Device999")
    assert shim.allowed(dev, WRITE, "/device/Device999/t")
    assert shim.allowed(dev, WRITE, "/device/Device999/t")  # a hit
    ticking(shim, lambda: any("Watch stream open" in line for line in shim.logs()), "the stream")
    reload(daemon, RULES + "  - {topic: extra/%u, access: read}\n")
    ticking(shim, lambda: announced(shim), "the new generation")
    assert shim.allowed(dev, WRITE, "/device/Device999/t")  # asked again: a miss
    stats = shim.close()
    assert (stats["misses"], stats["hits"]) == (2, 1)
    assert shim.stub.stub_kicks() == 0


def test_cleanup_is_prompt_while_the_daemon_is_down(make_daemon, make_shim):
    daemon = make_daemon(rules=RULES)
    shim = make_shim(daemon)
    daemon.stop()
    time.sleep(0.3)  # the thread is now waiting for the channel
    started = time.monotonic()
    shim.close()
    assert time.monotonic() - started < 5


def test_stream_comes_back_after_a_daemon_restart(make_daemon, make_shim):
    daemon = make_daemon("--no-watch", rules=RULES)
    shim = make_shim(daemon)
    assert shim.allowed(shim.client("c1", "Device123"), WRITE, "/device/Device123/t")
    ticking(shim, lambda: any("Watch stream open" in line for line in shim.logs()), "the stream")
    daemon.stop()
    ticking(shim, lambda: any("Watch stream lost" in line for line in shim.logs()), "the loss")
    daemon.start()
    ticking(shim, lambda: sum("Watch stream open" in line for line in shim.logs()) == 2, "the new stream")
    reload(daemon, WITHOUT_DEVICE123)
    ticking(shim, lambda: shim.stub.stub_kicks() == 1, "the kick after the restart")


def test_kicks_are_once_per_name_and_by_client_id_when_known(make_daemon, make_shim):
    daemon = make_daemon("--no-watch", rules=RULES)
    shim = make_shim(daemon)
    assert shim.allowed(shim.client("c1", "Device123"), WRITE, "/device/Device123/t")
    ticking(shim, lambda: any("Watch stream open" in line for line in shim.logs()), "the stream")
    for text in (WITHOUT_DEVICE123, RULES, WITHOUT_DEVICE123):   # Device123 named in several events
        reload(daemon, text)
    time.sleep(1.0)                                             # all events in, none applied yet
    ticking(shim, lambda: shim.stub.stub_kicks() >= 1, "the kick")
    for _ in range(20):
        time.sleep(0.05)
        shim.tick()
    assert shim.stub.stub_kicks() == 1                           # once, by client id
    assert any("disconnecting 1 client(s): the new policy took access from 1 name(s)" in line
               for line in shim.logs())
    reload(daemon, RULES)
    reload(daemon, WITHOUT_DEVICE123)                            # named again: no client known under it
    time.sleep(1.0)                                             # both events in
    for _ in range(10):
        time.sleep(0.05)
        shim.tick()
    assert shim.stub.stub_kicks() == 2                           # tried once by username, in the budget


def test_a_replay_the_daemon_cannot_prove_disconnects_every_client(make_shim, workdir):
    """The shim names its last generation and policy digest when it reopens the stream; an
    answer saying the missed kicks cannot be proven ends every session it knows of, even
    without the class kicks the daemon also sends."""
    digest = bytes(range(32))
    requests = []

    class Fake(pb_grpc.PolicyServicer):
        def CheckAcl(self, request, context):
            return pb.CheckAclResponse(result=pb.RESULT_ALLOW, generation=5)

        def Watch(self, request, context):
            requests.append(request)
            if len(requests) == 1:
                yield pb.PolicyEvent(generation=5, policy_digest=digest)
                return  # the stream ends: the shim reopens it
            yield pb.PolicyEvent(generation=6, replay_incomplete=True)
            while context.is_active():
                time.sleep(0.05)

    with fake_policyd(workdir, Fake()) as daemon:
        shim = make_shim(daemon)
        for n in (1, 2):
            assert shim.allowed(shim.client(f"c{n}", f"Device{n}"), WRITE, f"/device/Device{n}/t")
        ticking(shim, lambda: shim.stub.stub_kicks() == 2, "every client disconnected")
        assert requests[1].known_generation == 5 and requests[1].known_policy_digest == digest
        assert any("cannot prove it replayed every kick since generation 5" in line for line in shim.logs())
        shim.close()


def test_more_names_than_one_tick_takes_are_all_kicked_without_another_event(make_shim, workdir):
    """One event naming more users than a TICK takes off the queue: the rest are taken by
    the following TICKs although nothing new arrives (an idle TICK skips the queue's lock)."""
    names = [f"gone{i}".encode() for i in range(20_000)]

    class Fake(pb_grpc.PolicyServicer):
        def CheckAcl(self, request, context):
            return pb.CheckAclResponse(result=pb.RESULT_ALLOW, generation=5)

        def Watch(self, request, context):
            yield pb.PolicyEvent(generation=5)
            yield pb.PolicyEvent(generation=6, kick_usernames=names)
            while context.is_active():
                time.sleep(0.05)

    with fake_policyd(workdir, Fake()) as daemon:
        shim = make_shim(daemon)
        ticking(shim, lambda: shim.stub.stub_kicks() == len(names), "every name kicked", timeout=30)
        shim.close()
