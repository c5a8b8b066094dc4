#!/usr/bin/env python3
"""The shim's own costs, measured in-process (the real plugin, a stub broker, a real policyd).

    .venv/bin/python bench/shim_micro.py [--hits 1000000] [--misses 5000]

- cache hit: n identical checks in a C loop (no FFI cost per call), ns per check;
- miss round trip over the unix socket (cache off): p50/p99 µs;
- daemon stopped: per-check stall p50/p99/max µs, then recovery time after it restarts
  (from its socket existing to the first allowed check, polled every ~1 ms);
- daemon hung (SIGSTOP): stall of the first uncached checks (≈ one deadline each, until the
  breaker opens), then of uncached checks with the breaker open, and of cached checks.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "shim"))

from harness import PolicyDaemon, make_workdir, wait_for  # noqa: E402
from stack import percentile  # noqa: E402
from shimlib import WRITE, Shim, build_stub, ffi  # noqa: E402

RULES = "superusers: [admin]\npatterns:\n  - {topic: /device/%u/#, access: readwrite}\n"
TOPIC = b"/device/Device123/t"


def shim(stub: Path, daemon: PolicyDaemon, **opts) -> Shim:
    options = {"policyd_address": daemon.address, "policyd_timeout_ms": "100"}
    options.update({f"policyd_{k}": str(v) for k, v in opts.items()})
    s = Shim(stub, options)
    dev = s.client("c1", "Device123")
    wait_for(lambda: s.allowed(dev, WRITE, b"/device/Device123/warm"), 10, "first answer")
    return s


def timed(s: Shim, client, topic: bytes, n: int) -> list[float]:
    """Per-check µs."""
    out = ffi.new("int64_t[]", n)
    s.stub.stub_acl_check_timed(client, WRITE, topic, n, out)
    return [out[i] / 1000 for i in range(n)]


def hit_cost(stub: Path, daemon: PolicyDaemon, n: int) -> None:
    s = shim(stub, daemon)                    # its warm-up cached the scope /device/Device123/#
    dev = s.client("c1", "Device123")
    denied = b"/device/Other/t"               # a default deny: cached for this topic only
    assert not s.allowed(dev, WRITE, denied)
    allowed = ffi.new("int *")
    best = min(s.stub.stub_acl_check_loop(dev, WRITE, denied, n, allowed) for _ in range(5))
    assert allowed[0] == 0
    best_scoped = min(s.stub.stub_acl_check_loop(dev, WRITE, b"/device/Device123/x/y/z", n, allowed)
                      for _ in range(5))
    assert allowed[0] == n
    print(f"cache hit (exact entry):       {best / n:8.0f} ns per check (best of 5 x {n})")
    print(f"cache hit (scoped filter):     {best_scoped / n:8.0f} ns per check (exact miss, then the filter)")
    print(f"   counters: {s.close()}")


def miss_round_trip(stub: Path, daemon: PolicyDaemon, n: int) -> None:
    s = shim(stub, daemon, cache_size=0)
    dev = s.client("c1", "Device123")
    us = timed(s, dev, TOPIC, n)
    print(f"miss round trip (cache off):   p50 {percentile(us, 50):7.0f} µs  p99 {percentile(us, 99):7.0f} µs  "
          f"max {max(us):7.0f} µs  ({n} checks)")
    s.close()


def daemon_stopped(stub: Path, daemon: PolicyDaemon, n: int) -> None:
    s = shim(stub, daemon, cache_size=0)
    dev = s.client("c1", "Device123")
    daemon.stop()
    wait_for(lambda: not s.allowed(dev, WRITE, TOPIC), 5, "checks to fail")
    us = timed(s, dev, TOPIC, n)
    print(f"daemon stopped, per check:     p50 {percentile(us, 50):7.1f} µs  p99 {percentile(us, 99):7.1f} µs  "
          f"max {max(us):7.1f} µs  ({n} checks)")
    daemon.start()
    t0 = time.perf_counter()
    while not s.allowed(dev, WRITE, TOPIC):
        time.sleep(0.001)
    print(f"recovery after restart:        {(time.perf_counter() - t0) * 1000:7.0f} ms "
          f"(socket present -> first allowed check)")
    s.close()


def daemon_hung(stub: Path, daemon: PolicyDaemon, n: int) -> None:
    s = shim(stub, daemon, breaker_threshold=3, breaker_cooldown_ms=1000)
    dev = s.client("c1", "Device123")
    assert s.allowed(dev, WRITE, TOPIC)
    other = s.client("c2", "Device124")        # nothing cached for it
    daemon.proc.send_signal(signal.SIGSTOP)
    try:
        first = [timed(s, other, f"/device/Device124/{i}".encode(), 1)[0] for i in range(3)]
        open_us = timed(s, other, b"/device/Device124/x", n)
        cached_us = timed(s, dev, TOPIC, n)
    finally:
        daemon.proc.send_signal(signal.SIGCONT)
    print(f"daemon hung, first 3 uncached: {', '.join(f'{u / 1000:.0f}' for u in first)} ms "
          f"(deadline 100 ms; the breaker opens after 3)")
    print(f"daemon hung, breaker open:     p50 {percentile(open_us, 50):7.1f} µs  max {max(open_us):7.1f} µs "
          f"(uncached, denied without asking)")
    print(f"daemon hung, cached:           p50 {percentile(cached_us, 50) * 1000:7.0f} ns  "
          f"(served from the cache)")
    s.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hits", type=int, default=1_000_000)
    ap.add_argument("--misses", type=int, default=5000)
    args = ap.parse_args()
    workdir = make_workdir("policyd-shim-bench-")
    daemon = PolicyDaemon(workdir, RULES, "--log-level", "warning").start()
    try:
        stub = build_stub(Path(tempfile.mkdtemp(dir=workdir)))
        hit_cost(stub, daemon, args.hits)
        miss_round_trip(stub, daemon, args.misses)
        daemon_stopped(stub, daemon, args.misses)
        daemon_hung(stub, daemon, args.misses)
    finally:
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
