"""Without MOSQ_EVT_TICK (Mosquitto 2.0 with per_listener_settings true) kicks, Watch events and
stats silently stop: the plugin notices from its checks and says so, loudly and periodically."""

import time

from shimlib import WRITE


def test_checks_without_ticks_log_an_error_and_report_it(make_daemon, make_shim):
    shim = make_shim(make_daemon(), stats_interval_s=1)
    dev = shim.client("c1", "Device123")
    assert shim.allowed(dev, WRITE, "/device/Device123/a")
    time.sleep(5.2)
    assert shim.allowed(dev, WRITE, "/device/Device123/b")      # still answered (fail-closed path intact)
    errors = [l for l in shim.logs() if "no MOSQ_EVT_TICK from the broker" in l]
    assert len(errors) == 1 and "per_listener_settings" in errors[0], shim.logs()
    for _ in range(20):
        shim.check(dev, WRITE, "/device/Device123/c")
    assert len([l for l in shim.logs() if "no MOSQ_EVT_TICK" in l]) == 1   # rate-limited
    assert shim.close()["tick_missing"] == 1


def test_ticks_keep_the_watchdog_quiet(make_daemon, make_shim):
    shim = make_shim(make_daemon())
    dev = shim.client("c1", "Device123")
    assert shim.allowed(dev, WRITE, "/device/Device123/a")
    for _ in range(11):
        time.sleep(0.5)
        shim.tick()
        shim.check(dev, WRITE, "/device/Device123/b")
    assert not [l for l in shim.logs() if "no MOSQ_EVT_TICK" in l]
    assert shim.close()["tick_missing"] == 0
