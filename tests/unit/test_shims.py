"""ShimRegistry: the latest ShimStats per (broker id, peer), bounded."""

from policyd.server.shims import ShimRegistry


def test_keeps_the_latest_report_per_broker_and_peer():
    now = [100.0]
    reg = ShimRegistry(clock=lambda: now[0])
    reg.update("b1", "unix:", {"checks": 1, "cache_hits": 0, "bogus": 5})
    now[0] = 101.0
    reg.update("b1", "unix:", {"checks": 7, "cache_hits": 5, "breaker_open": True})
    reg.update("b2", "unix:", {"checks": 2})
    snap = reg.snapshot()
    assert snap[("b1", "unix:")] == {"stats": {"checks": 7, "cache_hits": 5, "breaker_open": True},
                                     "last_seen": 101.0}
    assert snap[("b2", "unix:")]["stats"] == {"checks": 2}
    snap[("b1", "unix:")]["stats"]["checks"] = 0          # a copy
    assert reg.snapshot()[("b1", "unix:")]["stats"]["checks"] == 7


def test_bounded_by_evicting_the_longest_silent():
    now = [0.0]
    reg = ShimRegistry(max_shims=2, clock=lambda: now[0])
    for i, name in enumerate(("old", "mid", "new")):
        now[0] = float(i)
        reg.update(name, "p", {"checks": i})
    assert set(reg.snapshot()) == {("mid", "p"), ("new", "p")}
