#!/usr/bin/env python3
"""Broker throughput with and without policyd, side by side in one run.

Each scenario starts a fresh real stack (TLS mosquitto, per-device
certificates), then: a superuser subscriber (`mosquitto_sub -C N`, QoS 1) on
`/device/#`, and --devices TLS device clients (one certificate each, CN =
device id) publishing N messages between them, each to its own subtree, with
`mosquitto_pub -l` (QoS 1), all at once. Every message costs the broker one
WRITE check and one READ check. Reported: delivered messages/s (wall clock
from first publish to last delivery) and broker CPU µs per message (/proc),
each also as a ratio to the no-ACL anchor (a).

  (a) no ACL at all              (b) acl_file with the seed's pattern rule
  (c) acl_file, 10,000 user blocks  (d) Mosquitto's dynamic-security plugin,
  10,000 clients with one role each  (e) our plugin, warm decision cache
  (f) our plugin, cache off (every check a round trip to policyd)

    .venv/bin/python bench/broker_throughput.py [--messages 5000] [--rounds 3] [--devices 4]
"""

from __future__ import annotations

import argparse
import json
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
IDENTITIES = 10_000
DYNSEC_SO = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"


def device_names(count: int) -> list[str]:
    return [f"Device{i}" for i in range(1, count + 1)]


def acl_file_many_users() -> str:
    """(c): one `user` block per device, as a site without patterns would write it."""
    blocks = ["user admin\ntopic readwrite #\n"]
    blocks += [f"user {name}\ntopic readwrite /device/{name}/#\n" for name in device_names(IDENTITIES)]
    return "\n".join(blocks)


def dynsec_config() -> dict:
    """(d): the same grants as dynamic-security clients and roles (it has no %u)."""
    def acls(topic: str) -> list[dict]:
        return [{"acltype": t, "topic": topic, "priority": 0, "allow": True}
                for t in ("publishClientSend", "publishClientReceive", "subscribePattern")]

    names = device_names(IDENTITIES)
    return {
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False,
                             "subscribe": False, "unsubscribe": True},
        "clients": [{"username": "admin", "roles": [{"rolename": "admin"}]}]
                   + [{"username": n, "roles": [{"rolename": n}]} for n in names],
        "groups": [],
        "roles": [{"rolename": "admin", "acls": acls("#")}] + [{"rolename": n, "acls": acls(f"/device/{n}/#")}
                                                              for n in names],
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_once(broker: Broker, messages: int, devices: list[str]) -> tuple[float, float]:
    per_device = messages // len(devices)
    total = per_device * len(devices)
    sub = subprocess.Popen(["mosquitto_sub", *broker.cli_tls_args("admin"), "-t", "/device/#",
                            "-q", "1", "-C", str(total), "-W", "300"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)  # let the subscription land
    payload = "".join(f"{i}\n" for i in range(per_device)).encode()
    cpu0, t0 = cpu_seconds(broker.proc.pid), time.perf_counter()
    pubs = [subprocess.Popen(["mosquitto_pub", *broker.cli_tls_args(d), "-t", f"/device/{d}/t",
                              "-q", "1", "-l"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE) for d in devices]
    for pub in pubs:
        pub.stdin.write(payload)
        pub.stdin.close()
    pub_rcs = [pub.wait(timeout=300) for pub in pubs]
    rc = sub.wait(timeout=300)
    wall, cpu = time.perf_counter() - t0, cpu_seconds(broker.proc.pid) - cpu0
    if any(pub_rcs) or rc:
        raise RuntimeError(f"pub rc={pub_rcs} sub rc={rc}: {sub.stderr.read()!r}")
    return total / wall, cpu / total * 1e6


def world_readable(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o644)
    return str(path)


def scenario(name: str, pki: Pki, workdir: Path, messages: int, rounds: int, devices: list[str], *,
             plugin: bool, acl_file: str | None = None, dynsec: bool = False, cache: bool = True) -> dict:
    daemon = PolicyDaemon(workdir, RULES, "--log-level", "warning").start() if plugin else None
    # Several publishers at once must not overflow the subscriber's queue (default 1000 messages).
    cfg = BrokerConfig(plugin=plugin, extra="max_queued_messages 0\n")
    if acl_file is not None:
        cfg.acl_file = world_readable(workdir / "acl", acl_file)
    if dynsec:
        conf = workdir / "dynamic-security.json"
        world_readable(conf, json.dumps(dynsec_config()))
        shutil.chown(conf, "mosquitto") if os.geteuid() == 0 else None  # it saves the file on changes
        cfg.extra += f"plugin {DYNSEC_SO}\nplugin_opt_config_file {conf}\n"
    if plugin and not cache:
        cfg.extra += "auth_opt_policyd_cache_size 0\n"
    broker = Broker(workdir, pki, daemon, cfg).start()
    try:
        run_once(broker, min(messages, 500), devices)  # warm up TLS session, caches, the daemon
        results = [run_once(broker, messages, devices) for _ in range(rounds)]
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
    ap.add_argument("--devices", type=int, default=4, help="publishing device clients")
    ap.add_argument("--only", default="abcdef", help="scenario letters to run, e.g. 'aef'")
    args = ap.parse_args()
    workdir = make_workdir("policyd-bench-")
    devices = device_names(args.devices)
    try:
        pki = Pki(workdir / "pki").issue_base()
        for cn in ("admin", *devices):
            pki.device(cn)
        common = (pki, workdir, args.messages, args.rounds, devices)
        plan = {
            "a": lambda: scenario("(a) mosquitto, no ACL", *common, plugin=False),
            "b": lambda: scenario("(b) mosquitto acl_file, seed pattern", *common, plugin=False,
                                  acl_file=ACL_FILE),
            "c": lambda: scenario(f"(c) mosquitto acl_file, {IDENTITIES:,} users", *common, plugin=False,
                                  acl_file=acl_file_many_users()),
            "d": lambda: scenario(f"(d) dynamic-security, {IDENTITIES:,} clients", *common, plugin=False,
                                  dynsec=True),
            "e": lambda: scenario("(e) policyd plugin, warm cache", *common, plugin=True),
            "f": lambda: scenario("(f) policyd plugin, cache off", *common, plugin=True, cache=False),
        }
        rows = [plan[k]() for k in args.only if k in plan]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    base = rows[0]
    print(f"messages per round: {args.messages} from {args.devices} devices, rounds: {args.rounds} "
          f"(best of), QoS 1, TLS")
    print(f"{'scenario':48} {'msg/s':>9} {'× (a)':>7} {'CPU µs/msg':>11} {'× (a)':>7}")
    for r in rows:
        print(f"{r['name']:48} {r['msgs_per_s']:9.0f} {r['msgs_per_s'] / base['msgs_per_s']:7.2f} "
              f"{r['cpu_us_per_msg']:11.1f} {r['cpu_us_per_msg'] / base['cpu_us_per_msg']:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
