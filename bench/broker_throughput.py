#!/usr/bin/env python3
"""Broker throughput with and without policyd, side by side in one run.

Each scenario starts a fresh real stack (TLS mosquitto, per-device
certificates), then: a superuser subscriber (`mosquitto_sub -C N`, QoS 1) on
`/device/#`, and Device123 publishing N messages to its own subtree with
`mosquitto_pub -l` (QoS 1). Every message costs the broker one WRITE check
and one READ check. Reported: delivered messages/s (wall clock from first
publish to last delivery) and broker CPU µs per message (/proc), each also as
a ratio to the no-ACL anchor.

    .venv/bin/python bench/broker_throughput.py [--messages 5000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness import Broker, BrokerConfig, Pki, PolicyDaemon, make_workdir  # noqa: E402

RULES = """\
superusers: [admin]
patterns:
  - topic: /device/%u/#
    access: readwrite
"""
ACL_FILE = "user admin\ntopic readwrite #\n\npattern readwrite /device/%u/#\n"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_once(broker: Broker, messages: int) -> tuple[float, float]:
    sub = subprocess.Popen(["mosquitto_sub", *broker.cli_tls_args("admin"), "-t", "/device/#",
                            "-q", "1", "-C", str(messages), "-W", "120"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)  # let the subscription land
    payload = "".join(f"{i}\n" for i in range(messages)).encode()
    cpu0, t0 = cpu_seconds(broker.proc.pid), time.perf_counter()
    pub = subprocess.run(["mosquitto_pub", *broker.cli_tls_args("Device123"), "-t", "/device/Device123/t",
                          "-q", "1", "-l"], input=payload, capture_output=True, timeout=300)
    rc = sub.wait(timeout=300)
    wall, cpu = time.perf_counter() - t0, cpu_seconds(broker.proc.pid) - cpu0
    if pub.returncode or rc:
        raise RuntimeError(f"pub rc={pub.returncode} sub rc={rc}: {pub.stderr!r} {sub.stderr.read()!r}")
    return messages / wall, cpu / messages * 1e6


def scenario(name: str, pki: Pki, workdir: Path, messages: int, rounds: int, *, plugin: bool,
             acl_file: bool = False) -> dict:
    daemon = PolicyDaemon(workdir, RULES, "--log-level", "warning").start() if plugin else None
    cfg = BrokerConfig(plugin=plugin)
    if acl_file:
        path = workdir / "acl"
        path.write_text(ACL_FILE)
        path.chmod(0o644)
        cfg.acl_file = str(path)
    broker = Broker(workdir, pki, daemon, cfg).start()
    try:
        run_once(broker, min(messages, 500))  # warm up TLS session, caches, the daemon
        results = [run_once(broker, messages) for _ in range(rounds)]
    finally:
        broker.stop()
        if daemon:
            daemon.stop()
    best_rate = max(r[0] for r in results)
    best_cpu = min(r[1] for r in results)
    return {"name": name, "msgs_per_s": best_rate, "cpu_us_per_msg": best_cpu}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    workdir = make_workdir("policyd-bench-")
    try:
        pki = Pki(workdir / "pki").issue_base()
        for cn in ("admin", "Device123"):
            pki.device(cn)
        rows = [
            scenario("(a) mosquitto, no ACL", pki, workdir, args.messages, args.rounds, plugin=False),
            scenario("(b) mosquitto acl_file, seed pattern", pki, workdir, args.messages, args.rounds,
                     plugin=False, acl_file=True),
            scenario("(e) policyd plugin (no decision cache yet)", pki, workdir, args.messages, args.rounds,
                     plugin=True),
        ]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    base = rows[0]
    print(f"messages per round: {args.messages}, rounds: {args.rounds} (best of), QoS 1, TLS")
    print(f"{'scenario':48} {'msg/s':>9} {'× (a)':>7} {'CPU µs/msg':>11} {'× (a)':>7}")
    for r in rows:
        print(f"{r['name']:48} {r['msgs_per_s']:9.0f} {r['msgs_per_s'] / base['msgs_per_s']:7.2f} "
              f"{r['cpu_us_per_msg']:11.1f} {r['cpu_us_per_msg'] / base['cpu_us_per_msg']:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
