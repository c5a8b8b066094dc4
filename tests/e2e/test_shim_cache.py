"""The decision cache in the real broker: a device's subtree costs one round trip, a disconnect
drops its entries, and the shim's counters reach policyd (ReportStats)."""

from __future__ import annotations

import re
import time

from harness import Broker, BrokerConfig, Device, PolicyDaemon, wait_for

from conftest import SEED_RULES

NOT_AUTHORIZED = 0x87


def stats_lines(log: str) -> list[dict[str, int]]:
    return [dict((k, int(v)) for k, v in re.findall(r"([a-z_]+)=(\d+)", line))
            for line in log.splitlines() if "policyd: checks=" in line]


def test_subtree_publishes_hit_the_cache_and_stats_reach_the_daemon(workdir, pki):
    daemon = PolicyDaemon(workdir, SEED_RULES).start()
    broker = Broker(workdir, pki, daemon, BrokerConfig(extra="auth_opt_policyd_stats_interval_s 1\n"
                                                             "auth_opt_policyd_broker_id e2e-broker\n")).start()
    try:
        dev = Device(broker, "Device777").connect()
        for i in range(50):
            assert dev.publish(f"/device/Device777/t/{i}", b"x") == 0
        assert dev.publish("/device/Other/t", b"x") == NOT_AUTHORIZED
        assert dev.publish("/device/Other/t", b"x") == NOT_AUTHORIZED
        wait_for(lambda: "shim stats from broker 'e2e-broker'" in daemon.log()
                 and "checks=52" in daemon.log(), 10, "ReportStats at the daemon")
        dev.close()
        time.sleep(1.2)                         # one more stats line after the disconnect
    finally:
        broker.stop()                           # the broker's log file is flushed on exit
        daemon.stop()
    lines = stats_lines(broker.log())
    final = lines[-1]
    # One round trip for the whole subtree (scope), one for the denied topic.
    assert final["checks"] == 52 and final["hits"] == 50 and final["misses"] == 2, final
    # while connected: the write scope, the read scope and the subscription its first miss
    # brought, the deny
    assert any(line["entries"] == 4 for line in lines)
    assert final["entries"] == 0                             # dropped on MOSQ_EVT_DISCONNECT
