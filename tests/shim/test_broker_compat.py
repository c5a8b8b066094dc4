"""What the plugin does differently so one build runs in Mosquitto 2.0 and 2.1 (stub broker).

The stub answers like 2.0: it has no mosquitto_strerror for the plugin to link (2.1's broker
does not export it) and refuses events it does not know with MOSQ_ERR_NOT_SUPPORTED."""

import threading

from shimlib import DENIED, WRITE

CLIENT_OFFLINE = 28  # 2.1's MOSQ_EVT_CLIENT_OFFLINE
TICK = 9


def test_every_tick_asks_for_the_next_within_100_ms(make_daemon, make_shim):
    # 2.1 sleeps until a plugin asks for its next tick; without the request kicks and Watch
    # events wait for unrelated traffic on an idle broker.
    shim = make_shim(make_daemon())
    assert shim.stub.stub_registered(TICK)
    for _ in range(3):
        shim.tick()
        assert 0 < shim.stub.stub_tick_request() <= 100


def test_a_broker_without_client_offline_still_runs_the_plugin(make_daemon, make_shim):
    shim = make_shim(make_daemon())
    assert not shim.stub.stub_registered(CLIENT_OFFLINE)
    dev = shim.client("c1", "Device123")
    assert shim.allowed(dev, WRITE, "/device/Device123/x")
    assert not shim.allowed(dev, WRITE, "/device/Other/x")
    assert not any("cannot register" in line for line in shim.logs())


def test_a_check_from_another_thread_is_refused_without_asking(make_daemon, make_shim):
    # Mosquitto 2.1's HTTP API checks access from libmicrohttpd's thread; the plugin's state
    # (cache, breaker, counters, gRPC client) belongs to the broker's main thread.
    shim = make_shim(make_daemon())
    dev = shim.client("http-api", "Device123")
    assert shim.allowed(dev, WRITE, "/device/Device123/x")  # on the main thread: asked, allowed
    results = []
    for _ in range(3):
        worker = threading.Thread(target=lambda: results.append(shim.check(dev, WRITE, "/device/Device123/x")))
        worker.start()
        worker.join()
    assert results == [DENIED] * 3
    refusals = [line for line in shim.logs() if "outside the broker's main thread" in line]
    assert len(refusals) == 2 and "(2 so far)" in refusals[-1]  # the 1st and 2nd, then the 4th...
