#!/usr/bin/env python3
"""Reconnect storm: every device connects over TLS at once to a fresh broker (cold caches).

What a fleet sees after a broker restart. --devices devices (EC P-256 certificates, made once and
kept under .bench/pki), driven by one load-generator process (bench/loadgen.c, one poll loop):
they connect as fast as the broker takes them (at most --pending short of their CONNACK at any
time, 64 by default: with all 2,000 at once the broker's accept queue overflowed and the kernel's
SYN retransmission timers, 1 s, 3 s, 7 s..., decided the wall, which then ranged from 6 to 37 s
for one configuration; --pending 0 is that), each subscribes to `/device/<id>/#`, publishes one QoS 1 message to
`/device/<id>/t` once its SUBACK is in, and waits for it to come back. Under policyd each device
makes three checks the plugin has never seen: SUBSCRIBE, WRITE, READ. The first (its SUBSCRIBE)
is a call to policyd on the broker's thread, whose answer brings the others' scopes; in identity
mode the CONNECT's Authenticate brings all three, and on 2.1 it is answered off the broker's thread.

Per configuration (no ACL, acl_file with the seed pattern, policyd with the seed rules and an empty
cache; a fresh broker, and for policyd a fresh daemon, for every run; the configurations take
turns within each round), medians of --rounds rounds:

  wall        from the first connect to the last device receiving its own message
  broker CPU  utime+stime of the broker process over the same interval (/proc, 10 ms ticks)
  daemon CPU  the same for `policyd serve`
  SUBACK / PUBACK p50, p99: SUBSCRIBE→SUBACK and PUBLISH→PUBACK seen by the devices: each is one
              check (a miss under policyd) plus the broker's queue during the storm
  decision    the daemon's own time per CheckAcl (its policyd_decision_duration_seconds histogram)
  miss p50, p99: each CheckAcl round trip on the broker's thread, as the plugin timed it
              (policyd_shim_miss_round_trip_seconds, reported every second; interpolated
              within its buckets)
  RSS/conn    the broker's resident memory after the storm minus before, per device
  cache B/dev the plugin's accounted cache bytes (policyd_shim_cache_bytes: each allocation with
              its allocator overhead) right after the storm minus before it, per device (its cache
              record and entries), and the cached entries per device (the daemon's TTL is 60 s here,
              so none has expired)

    .venv/bin/python bench/reconnect_storm.py [--devices 2000] [--rounds 3] [--pending 64]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from stack import (LABELS, Broker, broker_config, build_loadgen, cached_pki, cpu_seconds, device_names,
                   loadgen_args, median, rss_kib, start_daemon)

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent / "tests"))
from harness import broker_version, free_port, make_workdir  # noqa: E402

STORM_CONFIGS = ("none", "acl_file", "policyd", "policyd_identity")
# Under the storm a cold check may queue behind thousands of others at the daemon: the default
# 100 ms deadline would deny some of them, which would make policyd look faster than it is.
POLICYD_STORM = "auth_opt_policyd_timeout_ms 5000\nauth_opt_policyd_stats_interval_s 1\n"
ROUND_TRIP = "policyd_shim_miss_round_trip_seconds"


def scrape(metrics_port: int) -> list[tuple[str, dict, float]]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def decision_seconds(samples) -> tuple[float, int]:
    values = {name: value for name, _, value in samples}
    return (values.get("policyd_decision_duration_seconds_sum", 0.0),
            int(values.get("policyd_decision_duration_seconds_count", 0)))


def quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """From cumulative (upper bound, count) pairs, linear within the bucket that holds q."""
    total = buckets[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= q * total and count > below:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (q * total - below) / (count - below)
        lower, below = bound, count
    return lower


def shim_report(metrics_port: int, calls: int) -> dict:
    """The plugin's report once it counts every call: p50 and p99 (s) of its CheckAcl round
    trips, and its decision cache's entries and bytes (while every device is still connected)."""
    deadline = time.monotonic() + 5
    while True:
        samples = scrape(metrics_port)
        buckets = sorted((float(labels["le"]), value) for name, labels, value in samples
                         if name == f"{ROUND_TRIP}_bucket")
        timed = int(buckets[-1][1]) if buckets else 0
        reported = any(name == "policyd_shim_cache_bytes" for name, _, _ in samples)
        if (reported and timed >= calls) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    gauges = {name: value for name, _, value in samples if name.startswith("policyd_shim_cache_")}
    return {"miss_p50_us": quantile(buckets, 0.5) * 1e6 if timed else 0.0,
            "miss_p99_us": quantile(buckets, 0.99) * 1e6 if timed else 0.0, "timed": timed,
            "cache_entries": int(gauges.get("policyd_shim_cache_entries", 0)),
            "cache_bytes": int(gauges.get("policyd_shim_cache_bytes", 0))}


def storm_once(config: str, pki, devices: list[str], pending: int) -> dict:
    workdir = make_workdir("policyd-storm-")
    metrics_port = free_port()
    # Answers outlive the run (60 s), so the cache's size after the storm is every device's.
    daemon = (start_daemon(workdir, "--metrics-listen", f"127.0.0.1:{metrics_port}", "--cache-ttl-ms", "60000")
              if config.startswith("policyd") else None)
    broker = Broker(workdir, pki, daemon, broker_config(config, workdir, devices, POLICYD_STORM))
    gen = None
    try:
        broker.start()
        time.sleep(0.5)
        empty = shim_report(metrics_port, 0) if daemon else {}
        pid = broker.proc.pid
        rss0, cpu0 = rss_kib(pid), cpu_seconds(pid)
        dcpu0 = cpu_seconds(daemon.proc.pid) if daemon else 0.0
        gen = subprocess.Popen(loadgen_args(broker, "--mode", "storm", "--devices", str(len(devices)),
                                            "--timeout", "300", "--pending", str(pending)),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = gen.stdout.readline()
        cpu1, rss1 = cpu_seconds(pid), rss_kib(pid)
        dcpu1 = cpu_seconds(daemon.proc.pid) if daemon else 0.0
        if not line.startswith("STORM"):
            raise RuntimeError(f"storm failed (rc={gen.wait()}):\n{broker.log()[-2000:]}")
        fields = dict(kv.split("=") for kv in line.split()[1:])
        decided = decision_seconds(scrape(metrics_port)) if daemon else (0.0, 0)
        shim = shim_report(metrics_port, decided[1]) if daemon else {}
        gen.stdin.write("quit\n")
        gen.stdin.flush()
        gen.wait(timeout=60)
    finally:
        if gen and gen.poll() is None:
            gen.kill()
        broker.stop()
        if daemon:
            daemon.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    row = {k: float(v) for k, v in fields.items()}
    row.update(config=config, broker_cpu=cpu1 - cpu0, daemon_cpu=dcpu1 - dcpu0,
               rss_per_conn_kib=(rss1 - rss0) / len(devices),
               decision_us=decided[0] / decided[1] * 1e6 if decided[1] else 0.0, decisions=decided[1],
               miss_p50_us=0.0, miss_p99_us=0.0, timed=0, cache_entries=0, cache_bytes=0)
    row.update(shim)
    row["cache_bytes_per_device"] = (row["cache_bytes"] - empty.get("cache_bytes", 0)) / len(devices)
    row["entries_per_device"] = row["cache_entries"] / len(devices)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default=",".join(STORM_CONFIGS))
    ap.add_argument("--pending", type=int, default=64,
                    help="most devices short of their CONNACK at a time (0: all at once)")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, args.devices * 2 + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # the broker and the load generator inherit it
    build_loadgen()
    pki = cached_pki(args.devices)
    devices = device_names(args.devices)
    configs = [c for c in STORM_CONFIGS if c in args.only.split(",")]
    runs: dict[str, list[dict]] = {c: [] for c in configs}
    for _ in range(args.rounds):
        for c in configs:
            runs[c].append(storm_once(c, pki, devices, args.pending))

    def med(c: str, key: str) -> float:
        return median([r[key] for r in runs[c]])

    anchor = "acl_file" if "acl_file" in configs else configs[0]
    at_once = f"at most {args.pending} short of CONNACK at a time" if args.pending > 0 else "all at once"
    print(f"mosquitto {'.'.join(map(str, broker_version()))}: {args.devices} TLS devices connect ({at_once}), "
          f"subscribe, publish one QoS 1 message, receive it; medians of {args.rounds} rounds, "
          "fresh broker (and daemon) each")
    print(f"{'configuration':36} {'wall s':>7} {'× acl':>6} {'brk CPU s':>9} {'× acl':>6} {'dmn CPU s':>9} "
          f"{'SUBACK p50/p99 ms':>18} {'PUBACK p50/p99 ms':>18} {'decide µs':>9} {'miss p50/p99 µs':>16} "
          f"{'RSS KiB/conn':>12} {'cache B/dev':>11} {'entries/dev':>11}")
    for c in configs:
        print(f"{LABELS[c]:36} {med(c, 'wall'):7.2f} {med(c, 'wall') / med(anchor, 'wall'):6.2f} "
              f"{med(c, 'broker_cpu'):9.2f} {med(c, 'broker_cpu') / med(anchor, 'broker_cpu'):6.2f} "
              f"{med(c, 'daemon_cpu'):9.2f} "
              f"{med(c, 'suback_p50') * 1e3:8.1f}/{med(c, 'suback_p99') * 1e3:<9.1f} "
              f"{med(c, 'puback_p50') * 1e3:8.1f}/{med(c, 'puback_p99') * 1e3:<9.1f} "
              f"{med(c, 'decision_us'):9.0f} {med(c, 'miss_p50_us'):7.0f}/{med(c, 'miss_p99_us'):<8.0f} "
              f"{med(c, 'rss_per_conn_kib'):12.1f} {med(c, 'cache_bytes_per_device'):11.0f} "
              f"{med(c, 'entries_per_device'):11.1f}")
    for c in configs:
        print(f"  {c}: walls {[round(r['wall'], 2) for r in runs[c]]}, "
              f"broker CPU {[round(r['broker_cpu'], 2) for r in runs[c]]}, "
              f"cache entries after the storm {[r['cache_entries'] for r in runs[c]]}, "
              f"decisions {[r['decisions'] for r in runs[c]]}, "
              f"round trips timed {[r['timed'] for r in runs[c]]}, "
              f"connections retried {[int(r['retries']) for r in runs[c]]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
