"""What the brokers' shims report about themselves (Policy.ReportStats).

Each shim sends its counters every `auth_opt_policyd_stats_interval_s`.
The registry keeps the latest report per (broker_id, peer) so metrics can
show hit rates, errors and breaker state next to the daemon's own figures.
Bounded: a flood of made-up broker ids cannot grow it without limit.
"""

from __future__ import annotations

import threading
import time
from typing import Any

# Plenty for real deployments (one entry per broker process).
MAX_SHIMS = 1024

STAT_FIELDS = ("checks", "allowed", "denied", "errors", "cache_hits", "cache_misses",
               "cache_entries", "cache_bytes", "stale_served", "breaker_opens", "breaker_open", "tick_missing")
# The shim's histogram of CheckAcl round trips on the broker's thread, kept as
# {"bounds_us": (...), "counts": (...), "sum_us": n} under this key.
ROUND_TRIP = "miss_round_trip"
# More buckets than any shim sends; a longer list is not kept.
MAX_ROUND_TRIP_BOUNDS = 64


def report_stats(msg) -> dict[str, Any]:
    """The figures of one ShimStats message worth keeping; a malformed histogram is left out."""
    stats: dict[str, Any] = {name: getattr(msg, name) for name in STAT_FIELDS}
    bounds, counts = tuple(msg.miss_round_trip_bounds_us), tuple(msg.miss_round_trip_counts)
    if (0 < len(bounds) <= MAX_ROUND_TRIP_BOUNDS and len(counts) == len(bounds) + 1
            and all(a < b for a, b in zip(bounds, bounds[1:]))):
        stats[ROUND_TRIP] = {"bounds_us": bounds, "counts": counts, "sum_us": msg.miss_round_trip_sum_us}
    return stats


class ShimRegistry:
    def __init__(self, max_shims: int = MAX_SHIMS, clock=time.time):
        self._lock = threading.Lock()
        self._latest: dict[tuple[str, str], dict[str, Any]] = {}
        self._max = max_shims
        self._clock = clock

    def update(self, broker_id: str, peer: str, stats: dict[str, Any]) -> None:
        """Record the latest stats of one shim (unknown keys are ignored)."""
        entry = {"stats": {k: stats[k] for k in (*STAT_FIELDS, ROUND_TRIP) if k in stats},
                 "last_seen": self._clock()}
        key = (broker_id, peer)
        with self._lock:
            if key not in self._latest and len(self._latest) >= self._max:
                oldest = min(self._latest, key=lambda k: self._latest[k]["last_seen"])
                del self._latest[oldest]
            self._latest[key] = entry

    def snapshot(self) -> dict[tuple[str, str], dict[str, Any]]:
        """{(broker_id, peer): {"stats": {...}, "last_seen": unix time}}, a copy."""
        with self._lock:
            return {k: {"stats": dict(v["stats"]), "last_seen": v["last_seen"]} for k, v in self._latest.items()}
