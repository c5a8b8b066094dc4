#!/usr/bin/env python3
"""Kicks on the real broker: N TLS devices connected, one reload takes access from all of them.

    .venv/bin/python bench/kick_broker.py [--devices 10000]

The real broker (Debian's, or POLICYD_BROKER), the real plugin and `policyd serve`; the C load
generator (bench/loadgen.c, mode `hold`, 5,000 devices per process) holds every device's connection, each device made one
check, then a reload removes every device's grant: the daemon names all N in its kicks and the
plugin disconnects them from TICKs (at most 1,000 and 20 ms per TICK). A paho probe publishes QoS 1
in a loop throughout: its longest round trip shows how long the broker's thread was busy kicking.
Printed: time from the reload to the last disconnect (and the median one), the probe's round trips
before and during the kicks.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time

from stack import broker_config, build_loadgen, cached_pki, device_names, loadgen_args

from harness import Broker, Device, PolicyDaemon, make_workdir, run_policyd  # noqa: E402

PROBE = "admin"
# libmosquitto keeps a socket pair per client besides its connection: 3 descriptors per device, so
# one load generator holds at most this many devices within a 20,000 open-files limit.
PER_LOADGEN = 5000


def rules(devices: list[str]) -> str:
    grant = "    - {topic: /device/%u/#, access: readwrite}\n"
    return "users:\n" + "".join(f"  {name}:\n{grant}" for name in [PROBE, *devices])


class Probe:
    """Publishes QoS 1 in a loop; keeps (start time, round trip) of each PUBACK."""

    def __init__(self, broker: Broker):
        self.device = Device(broker, PROBE).connect()
        self.samples: list[tuple[float, float]] = []
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while self.running:
            t0 = time.monotonic()
            if self.device.publish(f"/device/{PROBE}/t", b"x", timeout=30) != 0:
                raise RuntimeError("the probe's publish was refused")
            self.samples.append((t0, time.monotonic() - t0))
            time.sleep(0.005)

    def stop(self) -> None:
        self.running = False
        self.thread.join(timeout=35)
        self.device.close()

    def between(self, start: float, end: float) -> list[float]:
        return [rtt for t, rtt in self.samples if start <= t <= end]


def ms(values: list[float], q: float) -> str:
    if not values:
        return "n/a"
    s = sorted(values)
    return f"{s[min(len(s) - 1, int(q * len(s)))] * 1000:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=10000)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 3 * min(args.devices, PER_LOADGEN) + 512 or hard < args.devices + 512:
        print(f"open files limit {hard} is too low for {args.devices} connections", file=sys.stderr)
        return 2
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the broker and loadgen
    build_loadgen()
    devices = device_names(args.devices)
    pki = cached_pki(args.devices)
    workdir = make_workdir("policyd-kick-broker-")
    daemon = PolicyDaemon(workdir, rules(devices), "--log-level", "warning").start()
    # 10,000 first checks at once are a miss storm: a generous deadline keeps them answered (this
    # bench is about kicks; the storm bench measures misses).
    config = broker_config("policyd", workdir, devices, plugin_extra="auth_opt_policyd_timeout_ms 5000\n")
    broker = Broker(workdir, pki, daemon, config).start()
    loadgens = []
    for first in range(1, args.devices + 1, PER_LOADGEN):
        count = min(PER_LOADGEN, args.devices + 1 - first)
        loadgens.append(subprocess.Popen(
            loadgen_args(broker, "--mode", "hold", "--devices", str(count), "--first", str(first), "--timeout", "600"),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    probe = None
    try:
        started = time.monotonic()
        for loadgen in loadgens:
            if loadgen.stdout.readline().strip() != "READY":
                raise RuntimeError("a load generator did not get its devices connected")
        print(f"{args.devices} devices connected, one check each, in {time.monotonic() - started:.1f} s",
              flush=True)
        probe = Probe(broker)
        time.sleep(2.0)
        quiet_end = time.monotonic()
        daemon.rules.write_text(rules([]))
        for loadgen in loadgens:
            loadgen.stdin.write("go\n")
            loadgen.stdin.flush()
        t_reload = time.monotonic()
        run_policyd("reload", "--address", daemon.admin_address)
        kicked, p50s, last = 0, [], 0.0
        for loadgen in loadgens:
            line = loadgen.stdout.readline().split()
            if not line or line[0] != "KICKED":
                raise RuntimeError(f"a load generator said {line!r}")
            kicked += int(line[1])
            p50s.append(float(line[2]))
            last = max(last, float(line[3]))
        p50 = statistics.median(p50s)  # equal shares: the median of the halves' medians
        time.sleep(0.5)
        probe.stop()
        during = probe.between(t_reload, t_reload + last)
        before = probe.between(quiet_end - 2.0, quiet_end)
        print(f"{kicked} devices kicked by one reload: median {p50 * 1000:.0f} ms, last {last * 1000:.0f} ms "
              f"after it", flush=True)
        print(f"probe PUBACK round trip before: p50 {ms(before, 0.5)} ms, max {ms(before, 1.0)} ms "
              f"({len(before)}); during the kicks: p50 {ms(during, 0.5)} ms, p99 {ms(during, 0.99)} ms, "
              f"max {ms(during, 1.0)} ms ({len(during)})", flush=True)
    finally:
        if probe is not None and probe.running:
            probe.stop()
        for loadgen in loadgens:
            loadgen.kill()
            loadgen.wait()
        broker.stop()
        daemon.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
