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


def test_ticks_that_stop_are_reported_and_a_tick_ends_each_report(make_daemon, make_shim):
    # The watchdog is a deadline each TICK moves: it must still expire once TICKs that did
    # arrive stop, and a TICK must end the episode so that the next stop is reported again.
    shim = make_shim(make_daemon(), stats_interval_s=1)
    dev = shim.client("c1", "Device123")
    for _ in range(2):
        for _ in range(8):
            shim.tick()
            assert shim.allowed(dev, WRITE, "/device/Device123/a")
            time.sleep(0.2)
        time.sleep(5.2)
        assert shim.allowed(dev, WRITE, "/device/Device123/b")
    assert [l for l in shim.logs() if "no MOSQ_EVT_TICK from the broker" in l], shim.logs()
    reported = [line["tick_missing"] for line in shim.stats_lines()]
    episodes = [flag for i, flag in enumerate(reported) if i == 0 or flag != reported[i - 1]]
    assert episodes == [0, 1, 0, 1], reported
