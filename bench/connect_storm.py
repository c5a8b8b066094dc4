#!/usr/bin/env python3
"""How long the broker stalls while CONNECTs wait for a slow policyd (identity mode).

One real TLS broker with the plugin in identity mode (`policyd_identity cert`), pointed at a
proxy in front of a real `policyd serve` that holds every Authenticate answer for --delay-ms
(tests/harness.py: DelayProxy). A probe client, connected before the storm, publishes QoS 1
back to back; then --clients devices connect at once. Reported: the probe's publish round trips
during the storm (median, max: the broker's stall), how long the storm took to be admitted, and
the same round trips with no storm. POLICYD_BROKER picks the broker, as in the tests:

    .venv/bin/python bench/connect_storm.py [--clients 20] [--delay-ms 200]
    POLICYD_BROKER=.build/mosquitto-2.1.2/src/mosquitto .venv/bin/python bench/connect_storm.py
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness import (  # noqa: E402
    Broker,
    BrokerConfig,
    DelayProxy,
    Device,
    Pki,
    PolicyDaemon,
    broker_version,
    make_workdir,
)

RULES = """\
identity:
  source: cn
  issuers: [{ca}]
patterns:
  - {{topic: /device/%u/#, access: readwrite}}
"""


def probe_rtts(probe: Device, seconds: float) -> list[float]:
    rtts, started = [], time.monotonic()
    while time.monotonic() - started < seconds:
        t0 = time.monotonic()
        assert probe.publish("/device/Probe/t", b"x") == 0
        rtts.append((time.monotonic() - t0) * 1000)
    return rtts


def storm(broker: Broker, proxy: DelayProxy, probe: Device, clients: int, delay_s: float) -> dict:
    devices = [Device(broker, f"Storm{i}", client_id=f"storm-{i}") for i in range(clients)]
    done: list[float] = []
    proxy.delay = delay_s
    started = time.monotonic()

    def join(dev: Device) -> None:
        dev.connect(timeout=120)
        done.append(time.monotonic() - started)

    threads = [threading.Thread(target=join, args=(dev,)) for dev in devices]
    for t in threads:
        t.start()
    rtts = []
    while any(t.is_alive() for t in threads):
        rtts += probe_rtts(probe, 0.05)
    for t in threads:
        t.join()
    proxy.delay = 0.0
    for dev in devices:
        dev.close()
    return {"rtts": rtts, "admitted_s": max(done)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--delay-ms", type=int, default=200)
    args = ap.parse_args()

    work = make_workdir("policyd-bench-storm-")
    pki = Pki(work / "pki").issue_base()
    for i in range(args.clients):
        pki.device(f"Storm{i}")
    daemon = PolicyDaemon(work, RULES.format(ca=pki.ca)).start()
    proxy = DelayProxy(work / "proxy.sock", daemon.address)
    broker = Broker(work, pki, SimpleNamespace(address=proxy.address), BrokerConfig(
        use_identity_as_username=False,
        extra="auth_opt_policyd_identity cert\nauth_opt_policyd_timeout_ms 5000")).start()
    try:
        probe = Device(broker, "Probe", client_id="probe").connect()
        quiet = probe_rtts(probe, 1.0)
        out = storm(broker, proxy, probe, args.clients, args.delay_ms / 1000)
        probe.close()
    finally:
        broker.stop()
        proxy.stop()
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)
    version = ".".join(map(str, broker_version()))
    print(f"mosquitto {version}: {args.clients} CONNECTs at once, policyd answers each after {args.delay_ms} ms")
    print(f"  probe publish RTT, no storm:    median {statistics.median(quiet):.1f} ms, max {max(quiet):.1f} ms "
          f"(n={len(quiet)})")
    print(f"  probe publish RTT, during storm: median {statistics.median(out['rtts']):.1f} ms, "
          f"max {max(out['rtts']):.1f} ms (n={len(out['rtts'])})")
    print(f"  all {args.clients} admitted after {out['admitted_s'] * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
