"""ShimRegistry: the latest ShimStats per (broker id, peer), bounded."""

import pytest

from policyd.server.metrics import round_trip_buckets
from policyd.server.shims import ROUND_TRIP, ShimRegistry, report_stats
from policyd.v1 import policy_pb2 as pb


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


def test_round_trip_histogram_is_kept_and_exported_cumulatively():
    msg = pb.ShimStats(checks=9, miss_round_trip_bounds_us=[100, 200], miss_round_trip_counts=[3, 4, 2],
                       miss_round_trip_sum_us=1500)
    stats = report_stats(msg)
    assert stats["checks"] == 9
    assert stats[ROUND_TRIP] == {"bounds_us": (100, 200), "counts": (3, 4, 2), "sum_us": 1500}
    reg = ShimRegistry()
    reg.update("b", "p", stats)
    kept = reg.snapshot()[("b", "p")]["stats"][ROUND_TRIP]
    assert round_trip_buckets(kept) == [("0.0001", 3), ("0.0002", 7), ("+Inf", 9)]


@pytest.mark.parametrize("bounds, counts", [
    ([200, 100], [1, 1, 1]),                 # not increasing
    ([100, 100], [1, 1, 1]),
    ([100, 200], [1, 1]),                    # one count short
    ([100], [1, 1, 1]),
    (list(range(1, 66)), [0] * 66),          # more bounds than any shim sends
])
def test_a_malformed_round_trip_histogram_is_left_out(bounds, counts):
    msg = pb.ShimStats(checks=1, miss_round_trip_bounds_us=bounds, miss_round_trip_counts=counts)
    assert ROUND_TRIP not in report_stats(msg)
    assert report_stats(msg)["checks"] == 1
