"""Daemon hung, stopped, restarted: deadline, breaker, fail-fast, recovery, on_error stale, stats."""

import signal
import time

from harness import wait_for
from shimlib import WRITE


def test_hung_daemon_costs_one_deadline_per_check_until_the_breaker_opens(make_daemon, make_shim):
    daemon = make_daemon()
    shim = make_shim(daemon, timeout_ms=300, breaker_threshold=3, breaker_cooldown_ms=300)
    dev = shim.client("c1", "Device123")
    assert shim.allowed(dev, WRITE, "/device/Device123/cached")
    daemon.proc.send_signal(signal.SIGSTOP)
    try:
        assert shim.allowed(dev, WRITE, "/device/Device123/cached")      # cached: still served
        for i in range(3):
            assert not shim.allowed(dev, WRITE, f"/device/Device123/new{i}")  # deadline misses
        for i in range(5):
            assert not shim.allowed(dev, WRITE, f"/device/Device123/more{i}")  # breaker open: not asked
        time.sleep(0.35)
        assert not shim.allowed(dev, WRITE, "/device/Device123/probe")   # half-open probe misses again
        assert not shim.allowed(dev, WRITE, "/device/Device123/after")   # open again
    finally:
        daemon.proc.send_signal(signal.SIGCONT)
    time.sleep(0.35)
    assert shim.allowed(dev, WRITE, "/device/Device123/back")            # probe answered: closed
    assert shim.allowed(dev, WRITE, "/device/Device123/back2")
    stats = shim.close()
    assert stats["deadline"] == 4, stats
    assert stats["skipped"] == 6 and stats["opens"] == 2, stats
    assert any("circuit breaker opened" in line for line in shim.logs())


def test_stopped_daemon_fails_fast_and_recovery_is_prompt(make_daemon, make_shim):
    daemon = make_daemon()
    shim = make_shim(daemon, timeout_ms=1000)
    dev = shim.client("c1", "Device123")
    assert shim.allowed(dev, WRITE, "/device/Device123/a")
    daemon.stop()
    wait_for(lambda: not shim.allowed(dev, WRITE, "/device/Device123/x"), 5, "checks to fail")
    for i in range(20):   # each fails at once (UNAVAILABLE), none waits for the 1 s deadline
        assert not shim.allowed(dev, WRITE, f"/device/Device123/y{i}")
    daemon.start()
    wait_for(lambda: shim.allowed(dev, WRITE, "/device/Device123/z"), 5, "recovery after restart")
    stats = shim.close()
    assert stats["unavailable"] >= 20 and stats["deadline"] == 0 and stats["opens"] == 0, stats
    assert any("daemon answering again" in line for line in shim.logs())


def test_on_error_stale_serves_expired_answers_of_the_current_generation(make_daemon, make_shim):
    daemon = make_daemon("--cache-ttl-ms", "200")
    shim = make_shim(daemon, on_error="stale")
    dev = shim.client("c1", "Device123")
    assert shim.allowed(dev, WRITE, "/device/Device123/t")
    assert not shim.allowed(dev, WRITE, "/device/Other/t")
    daemon.stop()
    time.sleep(0.3)                                             # both entries expired
    assert shim.allowed(dev, WRITE, "/device/Device123/t")      # stale allow
    assert not shim.allowed(dev, WRITE, "/device/Other/t")      # stale deny
    assert not shim.allowed(dev, WRITE, "/device/Device123/never-seen")  # nothing cached: deny
    stats = shim.close()
    assert stats["stale"] == 2, stats
    assert any("on_error stale" in line for line in shim.logs())


def test_on_error_deny_is_the_default(make_daemon, make_shim):
    daemon = make_daemon("--cache-ttl-ms", "200")
    shim = make_shim(daemon)
    dev = shim.client("c1", "Device123")
    assert shim.allowed(dev, WRITE, "/device/Device123/t")
    daemon.stop()
    time.sleep(0.3)
    assert not shim.allowed(dev, WRITE, "/device/Device123/t")
    assert shim.close()["stale"] == 0


def test_counters_are_logged_and_reported_to_the_daemon(make_daemon, make_shim):
    daemon = make_daemon()
    shim = make_shim(daemon, stats_interval_s=1, broker_id="shim-test-broker")
    dev = shim.client("c1", "Device123")
    for _ in range(3):
        assert shim.allowed(dev, WRITE, "/device/Device123/t")
    shim.tick()                                  # arms the interval
    time.sleep(1.05)
    shim.tick()                                  # due: logs and sends, without waiting
    assert shim.stats_lines()[-1]["hits"] == 2
    wait_for(lambda: "shim stats from broker 'shim-test-broker'" in daemon.log(), 5, "ReportStats")
    line = next(l for l in daemon.log().splitlines() if "shim stats from broker" in l)
    assert "checks=3" in line and "cache_hits=2" in line and "cache_misses=1" in line


def test_stale_answers_also_while_the_breaker_is_open(make_daemon, make_shim):
    daemon = make_daemon("--cache-ttl-ms", "200")
    shim = make_shim(daemon, on_error="stale", timeout_ms=300, breaker_threshold=1, breaker_cooldown_ms=60000)
    dev = shim.client("c1", "Device123")
    assert shim.allowed(dev, WRITE, "/device/Device123/t")
    daemon.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(0.3)                                          # expired
        assert shim.allowed(dev, WRITE, "/device/Device123/t")   # deadline miss -> stale; breaker opens
        assert shim.allowed(dev, WRITE, "/device/Device123/t")   # breaker open -> stale, not asked
        assert not shim.allowed(dev, WRITE, "/device/Other/x")   # nothing cached -> deny
    finally:
        daemon.proc.send_signal(signal.SIGCONT)
    stats = shim.close()
    assert (stats["stale"], stats["deadline"], stats["skipped"], stats["opens"]) == (2, 1, 2, 1), stats
