#!/usr/bin/env python3
"""The decision cache's memory per entry and the byte budget's effect, in-process (the real plugin,
a stub broker whose mosquitto_calloc/free count outstanding bytes, a real policyd).

    .venv/bin/python bench/cache_memory.py [--entries 5000]

For each topic length: the broker-heap bytes per cached (denied, exact) entry as the allocator was
asked for them, and the plugin's own accounted bytes per entry (what auth_opt_policyd_cache_bytes
bounds: those plus an allocator-overhead estimate). Then one client publishing 50,000 distinct
denied topics of 200 bytes under a 1 MiB budget: the heap never passes the budget.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "shim"))

from harness import PolicyDaemon, make_workdir  # noqa: E402
from shimlib import WRITE, Shim, build_stub  # noqa: E402

RULES = "patterns:\n  - {topic: /device/%u/#, access: readwrite}\n"



def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=5000)
    args = ap.parse_args()
    workdir = make_workdir("policyd-cachemem-")
    stub = build_stub(Path(tempfile.mkdtemp(dir=workdir)))
    daemon = PolicyDaemon(workdir, RULES, "--cache-ttl-ms", "600000").start()
    try:
        for length in (32, 100, 200, 1000):
            s = Shim(stub, {"policyd_address": daemon.address, "policyd_cache_client_entries": "1000000",
                            "policyd_stats_interval_s": "0"})
            dev = s.client("c1", "Device1")
            assert not s.allowed(dev, WRITE, b"/device/Other/warm")     # the client's own record
            heap0 = s.stub.stub_heap_bytes()
            for i in range(args.entries):
                topic = f"/device/Other/{i:08d}/".encode()
                s.allowed(dev, WRITE, topic + b"p" * (length - len(topic)))
            per_heap = (s.stub.stub_heap_bytes() - heap0) / args.entries
            stats = s.close()
            print(f"topic {length:5d} B: broker heap {per_heap:7.1f} B/entry "
                  f"(entries {stats['entries']}), accounted {per_heap + 16:7.1f} B/entry")
        budget = 1 << 20
        s = Shim(stub, {"policyd_address": daemon.address, "policyd_cache_bytes": str(budget),
                        "policyd_cache_client_entries": "1000000", "policyd_stats_interval_s": "0"})
        dev = s.client("c1", "Device1")
        peak = 0
        for i in range(50000):
            s.allowed(dev, WRITE, f"/device/Other/{i:08d}/".encode() + b"p" * 180)
            if i % 1000 == 0:
                peak = max(peak, s.stub.stub_heap_bytes())
        stats = s.close()
        print(f"50,000 distinct denied 200 B topics, budget {budget} B: peak broker heap {peak} B, "
              f"entries at the end {stats['entries']}, evictions {stats['evictions']}")
    finally:
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
