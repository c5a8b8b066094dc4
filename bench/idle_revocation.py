#!/usr/bin/env python3
"""Revocation of an idle device: from Admin.Reload returning to the broker disconnecting it.

Real stack (TLS mosquitto + plugin + `policyd serve --no-watch`). Each round a device connects,
publishes once, and the broker is left idle for --idle-s; then the rules lose the device and
Admin.Reload is called (in-process gRPC, as `policyd reload` does, without the CLI's start-up). The kick travels as a Watch event and is carried out on the broker's TICK,
so this measures how soon an idle broker ticks (2.1 sleeps until a plugin asks). Target: 200 ms.
POLICYD_BROKER picks the broker, as in the tests:

    .venv/bin/python bench/idle_revocation.py [--rounds 20] [--idle-s 1.5]
    POLICYD_BROKER=.build/mosquitto-2.1.2/src/mosquitto .venv/bin/python bench/idle_revocation.py
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness import (  # noqa: E402
    Broker,
    BrokerConfig,
    Device,
    Pki,
    PolicyDaemon,
    broker_version,
    make_workdir,
    run_policyd,
)

RULES = """\
superusers: [admin]
users:
  Idle:
    - {topic: /device/%u/#, access: readwrite}
  Keeper:
    - {topic: /device/%u/#, access: readwrite}
"""
WITHOUT_IDLE = RULES.replace("  Idle:\n    - {topic: /device/%u/#, access: readwrite}\n", "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--idle-s", type=float, default=1.5)
    args = ap.parse_args()

    work = make_workdir("policyd-bench-idle-")
    pki = Pki(work / "pki").issue_base()
    daemon = PolicyDaemon(work, RULES, "--no-watch").start()
    broker = Broker(work, pki, daemon, BrokerConfig()).start()
    kicked_ms = []
    import grpc

    from policyd.v1 import policy_pb2 as pb
    from policyd.v1 import policy_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(daemon.admin_address)
    admin = pb_grpc.AdminStub(channel)
    try:
        for i in range(args.rounds):
            daemon.rules.write_text(RULES)
            run_policyd("reload", "--address", daemon.admin_address)
            dev = Device(broker, "Idle", client_id=f"idle-{i}").connect()
            assert dev.publish("/device/Idle/t", b"x") == 0
            time.sleep(args.idle_s)
            daemon.rules.write_text(WITHOUT_IDLE)
            assert admin.Reload(pb.ReloadRequest(), timeout=10).ok
            returned = time.perf_counter()
            dev.disconnects.get(timeout=30)
            kicked_ms.append(max(0.0, (time.perf_counter() - returned) * 1000))
            dev.close()
    finally:
        channel.close()
        broker.stop()
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)
    values = sorted(kicked_ms)
    p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
    print(f"mosquitto {'.'.join(map(str, broker_version()))}: idle device kicked after Admin.Reload returned: "
          f"n={len(values)} median {statistics.median(values):.0f} ms, p90 {p90:.0f} ms, max {values[-1]:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
