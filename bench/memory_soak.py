"""The broker's memory over a long run of uncached checks: real broker (TLS), real plugin, real policyd,
one device publishing distinct topics at QoS 1. Prints the broker's RSS every STEP checks.

    .venv/bin/python bench/memory_soak.py [--checks 100000] [--size 200]

Runs: (1) default options, CHECKS distinct denied topics (each answer cacheable per topic: the cache
fills to its per-client cap, then churns); (2) `auth_opt_policyd_cache_size 0`, CHECKS allowed and
CHECKS denied distinct topics (every one asks the daemon). Flat = the last sample minus the one after
warm-up stays within a few hundred KiB. Figures go to docs/benchmarks.md by hand, with this command.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness import ROOT, Broker, BrokerConfig, Device, Pki, PolicyDaemon, make_workdir  # noqa: E402

RULES = (ROOT / "examples" / "rules.yaml").read_text()
STEP = 10000
WARMUP = 5000


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))


def run(broker: Broker, cn: str, topic_of, checks: int, label: str) -> None:
    dev = Device(broker, cn)
    dev.client.max_inflight_messages_set(500)
    dev.connect()
    try:
        start = time.monotonic()
        samples = []
        for base in range(0, WARMUP + checks, STEP // 10):
            infos = [dev.client.publish(topic_of(i), b"x", qos=1) for i in range(base, base + STEP // 10)]
            for info in infos:
                info.wait_for_publish(60)
            done = base + STEP // 10
            if done == WARMUP or (done > WARMUP and (done - WARMUP) % STEP == 0):
                samples.append((done - WARMUP, rss_kib(broker.proc.pid)))
        rate = (WARMUP + checks) / (time.monotonic() - start)
        first = samples[0][1]
        print(f"{label}: {checks} checks at {rate:.0f}/s; RSS KiB after warm-up {first}, "
              f"then " + " ".join(f"{n // 1000}k:{r - first:+d}" for n, r in samples[1:]), flush=True)
    finally:
        dev.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checks", type=int, default=100000)
    ap.add_argument("--size", type=int, default=200, help="topic length (bytes)")
    args = ap.parse_args()
    pad = "p" * args.size
    workdir = make_workdir("policyd-soak-")
    daemon = None
    try:
        pki = Pki(workdir / "pki").issue_base()
        daemon = PolicyDaemon(workdir, RULES).start()
        for extra, phases in (
            ("", [("denied, cache on", "Device7", lambda i: f"/device/Other/{i}/{pad}")]),
            ("auth_opt_policyd_cache_size 0", [
                ("allowed, cache off", "Device8", lambda i: f"/device/Device8/{i}/{pad}"),
                ("denied, cache off", "Device8", lambda i: f"/device/Other/{i}/{pad}")]),
        ):
            broker = Broker(workdir, pki, daemon, BrokerConfig(extra=extra)).start()
            try:
                for label, cn, topic_of in phases:
                    run(broker, cn, topic_of, args.checks, label)
            finally:
                broker.stop()
    finally:
        if daemon:
            daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
