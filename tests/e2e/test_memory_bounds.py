"""A client that publishes endless distinct forbidden topics cannot grow the broker: the real broker
(TLS), the real plugin with its cache on, a real policyd, real MQTT clients. RSS is the broker's."""

from __future__ import annotations

import re
import sys
import time

import pytest

from harness import ROOT, Broker, BrokerConfig, Device, PolicyDaemon, wait_for

from conftest import SEED_RULES

sys.path.insert(0, str(ROOT / "bench"))
from reliability import record  # noqa: E402

BUDGET = 4 * 1024 * 1024


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def publish_burst(dev: Device, topics) -> None:
    infos = [dev.client.publish(t, b"x", qos=1) for t in topics]
    for info in infos:
        info.wait_for_publish(60)


def last_stats(daemon: PolicyDaemon) -> dict[str, int]:
    """The shim's counters as last reported to the daemon (ReportStats; the daemon logs each line
    whole, where the broker's buffered stdout may hold its own stats line back)."""
    lines = [l for l in daemon.log().splitlines() if "shim stats from broker" in l and "cache_hits=" in l]
    return {k: int(v) for k, v in re.findall(r"([a-z_]+)=(\d+)", lines[-1])} if lines else {}


@pytest.fixture
def bounded_broker(workdir, pki):
    daemon = PolicyDaemon(workdir, SEED_RULES, "--cache-ttl-ms", "600000").start()
    extra = f"auth_opt_policyd_cache_bytes {BUDGET}\nauth_opt_policyd_stats_interval_s 1\n"
    b = Broker(workdir, pki, daemon, BrokerConfig(extra=extra)).start()
    yield b, daemon
    b.stop()
    daemon.stop()


def fast_device(broker: Broker, cn: str) -> Device:
    dev = Device(broker, cn)
    dev.client.max_inflight_messages_set(500)
    return dev.connect()


def test_hostile_denied_topics_do_not_grow_the_broker(bounded_broker):
    broker, daemon = bounded_broker
    victim = fast_device(broker, "Device124")
    hostile = fast_device(broker, "Device123")
    try:
        victim_topics = [f"/device/Device999/v{i}" for i in range(20)]   # denied, cached per topic
        publish_burst(victim, victim_topics)
        big = "x" * 60000
        publish_burst(hostile, [f"/device/Other/w{i}/{big}" for i in range(100)])     # warm TLS buffers
        publish_burst(hostile, [f"/device/Other/w{i}/{'y' * 800}" for i in range(1000)])
        time.sleep(0.5)
        before = rss_kib(broker.proc.pid)
        publish_burst(hostile, [f"/device/Other/{i}/{big}" for i in range(1000)])      # 60 MB of topics
        publish_burst(hostile, [f"/device/Other/{i}/{'z' * 800}" for i in range(4000)])
        time.sleep(0.5)
        grown_kib = rss_kib(broker.proc.pid) - before
        time.sleep(1.2)                                      # a fresh stats line
        hits_before = last_stats(daemon)["cache_hits"]
        publish_burst(victim, victim_topics)                 # the victim's entries survived: hits
        wait_for(lambda: last_stats(daemon).get("checks", 0) >= 6140, 10, "a stats report")
        stats = last_stats(daemon)
    finally:
        victim.close()
        hostile.close()
    assert broker.alive
    assert stats["denied"] >= 6100, stats
    assert stats["cache_bytes"] <= BUDGET, stats
    assert stats["cache_hits"] - hits_before == 20, stats
    # Old plugin: every denied topic cached (~60 MB here). The bound: the budget, plus noise.
    assert grown_kib * 1024 < BUDGET + 2 * 1024 * 1024, f"broker grew {grown_kib} KiB"
    record("hostile-05-memory-denied-topics", row="client: 1,000 denied 60 KB topics + 4,000 denied 800 B "
           "topics (cache budget 4 MiB)",
           how="real broker + TLS device publishing distinct forbidden topics at QoS 1",
           test="tests/e2e/test_memory_bounds.py::test_hostile_denied_topics_do_not_grow_the_broker",
           happened=f"broker RSS grew {grown_kib} KiB (budget 4 MiB); cache {stats['cache_bytes']} bytes; "
                    "another client's 20 cached answers still hit",
           lost="n/a", denied_delivered=0)
