"""`per_listener_settings true` on Mosquitto 2.0: the broker sends plugins no MOSQ_EVT_TICK, so
kicks, Watch-stream events and stats reports silently stop (checks stay fail-closed). The plugin
notices from its checks and logs an error (and reports `tick_missing` to the daemon)."""

from __future__ import annotations

import time

import pytest
from harness import Broker, BrokerConfig, Device, wait_for


class PerListenerBroker(Broker):
    def render_config(self) -> str:
        return super().render_config().replace("per_listener_settings false", "per_listener_settings true", 1)


# 2.1 sends TICK with per_listener_settings true: there is nothing to report there.
@pytest.mark.broker(max=(2, 1, 0))
def test_no_tick_is_reported_as_an_error(workdir, pki, daemon):
    broker = PerListenerBroker(workdir, pki, daemon, BrokerConfig(extra="auth_opt_policyd_stats_interval_s 1")).start()
    try:
        dev = Device(broker, "Device123").connect()
        assert dev.publish("/device/Device123/a", b"x") == 0          # checks are answered
        time.sleep(5.5)
        assert dev.publish("/device/Device123/b", b"x") == 0
        assert dev.publish("/device/Device999/b", b"x") == 0x87       # and still enforced
        wait_for(lambda: "tick_missing=1" in daemon.log(), 10, "the shim to report tick_missing")
        dev.close()
    finally:
        broker.stop()                                                 # the broker's log is complete now
    assert "no MOSQ_EVT_TICK from the broker" in broker.log()
