"""The decision cache's bounds, in-process against a real daemon: bytes, per client, long topics,
expiry sweep, the broker's allocator, and on_error stale's maximum age."""

import signal
import time
from types import SimpleNamespace

from shimlib import DENIED, WRITE

from policyd.v1 import policy_pb2 as pb
from test_hostile_server import FakePolicy  # noqa: F401  (a real gRPC server answering raw bytes)

BUDGET = 256 * 1024


def _deny_many(shim, dev, n, size, prefix="/device/Other"):
    pad = "p" * size
    for i in range(n):
        assert not shim.allowed(dev, WRITE, f"{prefix}/{i}/{pad}")


def test_byte_budget_bounds_the_cache_and_the_broker_heap(make_daemon, make_shim):
    shim = make_shim(make_daemon(), cache_bytes=BUDGET, cache_client_entries=100000)
    base = shim.stub.stub_heap_bytes()
    dev = shim.client("c1", "Device123")
    _deny_many(shim, dev, 3000, 400)            # ~1.4 MB of distinct denied topics
    shim.tick()
    grown = shim.stub.stub_heap_bytes() - base
    stats = shim.close()
    assert 0 < grown <= BUDGET, grown            # the plugin's memory is the broker's, and bounded
    assert stats["bytes"] <= BUDGET and stats["evictions"] > 0, stats
    assert shim.stub.stub_heap_blocks() == 0     # everything given back at cleanup


def test_long_topics_are_never_cached(make_daemon, make_shim):
    shim = make_shim(make_daemon())
    dev = shim.client("c1", "Device123")
    topic = "/device/Other/" + "x" * 60000
    for _ in range(3):
        assert not shim.allowed(dev, WRITE, topic)
    stats = shim.close()
    # the one entry: the subscription to its own subtree its first miss brought
    assert (stats["misses"], stats["hits"], stats["entries"]) == (3, 0, 1), stats
    assert stats["not_stored"] == 3, stats


def test_one_client_churns_only_its_own_entries(make_daemon, make_shim):
    shim = make_shim(make_daemon(), cache_client_entries=50)
    victim = shim.client("v", "Device124")
    assert not shim.allowed(victim, WRITE, "/device/Other/v1")          # cached denies of another client
    assert not shim.allowed(victim, WRITE, "/device/Other/v2")
    hostile = shim.client("h", "Device123")
    _deny_many(shim, hostile, 2000, 100)
    assert not shim.allowed(victim, WRITE, "/device/Other/v1")          # still hits
    assert not shim.allowed(victim, WRITE, "/device/Other/v2")
    stats = shim.close()
    assert stats["hits"] == 2, stats
    # the hostile client's 50, the victim's two denies and the two scopes and the subscription
    # its first miss brought
    assert stats["entries"] <= 55, stats


def test_tick_sweeps_expired_entries_in_slices(make_daemon, make_shim):
    shim = make_shim(make_daemon("--cache-ttl-ms", "200"))
    dev = shim.client("c1", "Device123")
    _deny_many(shim, dev, 1500, 10)
    time.sleep(0.25)
    for _ in range(3):                           # 1,024 visits per tick
        shim.tick()
    stats = shim.close()
    assert stats["entries"] == 0, stats


def test_after_a_full_pass_the_sweep_pauses_then_resumes(make_daemon, make_shim):
    """A pass over a small cache at every TICK would cost every message; a second later it runs."""
    shim = make_shim(make_daemon("--cache-ttl-ms", "200"))
    dev = shim.client("c1", "Device123")
    _deny_many(shim, dev, 20, 10)
    time.sleep(0.25)
    shim.tick()                                  # one pass frees them all, then pauses
    _deny_many(shim, dev, 20, 10, prefix="/device/Again")
    time.sleep(0.25)
    shim.tick()                                  # paused: still there (never served: expired)
    assert shim.close()["entries"] == 21         # with the subscription the first miss brought
    shim = make_shim(make_daemon("--cache-ttl-ms", "200"))
    dev = shim.client("c1", "Device123")
    shim.tick()
    _deny_many(shim, dev, 20, 10)
    time.sleep(1.1)
    shim.tick()                                  # the pause is over
    assert shim.close()["entries"] == 0


def test_stale_answers_have_a_maximum_age(make_daemon, make_shim):
    daemon = make_daemon("--cache-ttl-ms", "100")
    shim = make_shim(daemon, on_error="stale", stale_max_age_s=1)
    dev = shim.client("c1", "Device123")
    answered = time.monotonic()
    assert shim.allowed(dev, WRITE, "/device/Device123/t")
    daemon.stop(signal.SIGKILL)
    time.sleep(0.3)
    assert time.monotonic() - answered < 0.9
    assert shim.allowed(dev, WRITE, "/device/Device123/t")      # expired < 1 s ago: served
    time.sleep(1.0)
    assert not shim.allowed(dev, WRITE, "/device/Device123/t")  # expired > 1 s ago: too old
    stats = shim.close()
    assert stats["stale"] == 1, stats


def test_stale_is_not_served_when_the_daemon_answered_badly(workdir, make_shim):
    fake = FakePolicy(str(workdir / "fake.sock"))
    try:
        fake.answer = lambda c: pb.CheckAclResponse(result=pb.RESULT_ALLOW, generation=1,
                                                    cache_ttl_ms=100).SerializeToString()
        shim = make_shim(SimpleNamespace(address=fake.address), on_error="stale")
        dev = shim.client("c1", "Device123")
        assert shim.allowed(dev, WRITE, "/device/Device123/t")
        time.sleep(0.2)
        fake.answer = lambda c: b"\xff" * 16                     # an answer, but a broken one
        assert shim.check(dev, WRITE, "/device/Device123/t") == DENIED
        stats = shim.close()
        assert stats["stale"] == 0 and stats["protocol"] == 1, stats
    finally:
        fake.stop()
