#!/usr/bin/env python3
"""A fleet policy of N identities in etcd: start-up sync, and one device revoked fleet-wide.

Real parts: a 3-member etcd cluster (loopback), two `policyd serve --source etcd://...`,
two TLS mosquitto brokers with the plugin (one per daemon), paho devices.

  sync:    `policyd push` of an N-identity file (regular form); then each daemon's start-up,
           from the process starting to its sockets being up (etcd read + build), and the
           part its own log attributes to the sync;
  revoke:  the same device connected to both brokers; from `Fleet.device_revoke` being called
           (in this process: one range and one transaction) to the broker disconnecting it,
           on each broker (the fleet-wide figure is the later of the two); then `device
           reset`, reconnect, again. A thread per daemon sends CheckAcl back to back meanwhile;
           their latencies are reported;
  file:    for comparison, the same N-identity policy as a rules file under one daemon: the
           device's entry removed and `Admin.Reload`, from the RPC being sent to the disconnect.

    .venv/bin/python bench/fleet_latency.py [--identities 100000] [--rounds 30]
"""

from __future__ import annotations

import argparse
import queue
import re
import shutil
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from etcd_harness import EtcdCluster, FleetDaemon, fleet_cli, revision_of  # noqa: E402
from harness import Broker, BrokerConfig, Device, Pki, PolicyDaemon, make_workdir, wait_for  # noqa: E402
from reload_latency import CheckLoad, big_rules  # noqa: E402

VICTIM = "D000001"


def ms(seconds: float) -> float:
    return seconds * 1000


def summary(values: list[float]) -> str:
    values = sorted(values)
    p = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return (f"n={len(values)} p50 {statistics.median(values):.1f} ms, p90 {p(0.90):.1f} ms, "
            f"p99 {p(0.99):.1f} ms, max {values[-1]:.1f} ms")


def timed_device(broker: Broker, client_id: str) -> tuple[Device, "queue.Queue"]:
    dev = Device(broker, VICTIM, client_id=client_id)
    gone: queue.Queue = queue.Queue()
    dev.client.on_disconnect = lambda *args: gone.put(time.perf_counter())
    return dev.connect(), gone


class KickObserver:
    """A Watch stream of its own on one daemon: when the kick of VICTIM leaves the daemon
    (the moment the brokers' plugins receive it too, give or take the loopback)."""

    def __init__(self, address: str, name: str):
        import threading

        import grpc

        from policyd.v1 import policy_pb2 as pb
        from policyd.v1 import policy_pb2_grpc as pb_grpc

        self.kicks: queue.Queue = queue.Queue()
        self._channel = grpc.insecure_channel(address)
        self._stream = pb_grpc.PolicyStub(self._channel).Watch(pb.WatchRequest(broker_id=f"bench-{name}"))
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            for event in self._stream:
                if VICTIM.encode() in event.kick_usernames:
                    self.kicks.put(time.perf_counter())
        except Exception:
            pass

    def close(self) -> None:
        self._stream.cancel()
        self._channel.close()


def log_seconds(line: str) -> float:
    stamp = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})", line).group(1)
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def sync_in_log(daemon: FleetDaemon) -> float:
    lines = daemon.log().splitlines()
    start = next(l for l in lines if "policyd starting" in l)
    synced = next(l for l in lines if "in force (etcd sync)" in l)
    return ms(log_seconds(synced) - log_seconds(start))


def fleet_part(identities: int, rounds: int) -> None:
    from policyd.fleet.etcd import Etcd, EtcdError, EtcdSource
    from policyd.fleet.publish import Fleet

    work = make_workdir("policyd-bench-fleet-")
    etcd = EtcdCluster(work / "etcd").start()
    source = etcd.source("/bench")
    daemons, brokers, loads = [], [], []
    try:
        rules = work / "rules.yaml"
        rules.write_text(big_rules(identities, None))
        push = fleet_cli(source, "push", str(rules), timeout=600)
        revision_of(push)
        print(f"push of {identities} identities ({rules.stat().st_size / 1e6:.1f} MB): "
              f"{push.seconds:.2f} s (CLI process: validate, chunks, commit)")
        pki = Pki(work / "pki").issue_base()
        for name in ("a", "b"):
            daemon = FleetDaemon(work / name, source)
            t0 = time.perf_counter()
            daemon.start(timeout=300)
            print(f"daemon {name} start-up: {time.perf_counter() - t0:.2f} s to its sockets; "
                  f"sync in its log (etcd read + build): {sync_in_log(daemon):.0f} ms")
            daemons.append(daemon)
        brokers = [Broker(d.workdir, pki, d, BrokerConfig()).start() for d in daemons]
        loads = [CheckLoad(d.address) for d in daemons]
        for load in loads:
            load.start()
        time.sleep(1.0)
        fleet = Fleet(Etcd(EtcdSource.parse(source)))
        observers = [KickObserver(d.address, name) for name, d in zip("ab", daemons)]
        per_broker: list[list[float]] = [[], []]
        fleet_wide: list[float] = []
        committed: list[float] = []                      # t0 -> the etcd transaction answered
        left_daemon: list[list[float]] = [[], []]        # t0 -> the kick event out of daemon a / b
        in_broker: list[list[float]] = [[], []]          # that event -> the client saw DISCONNECT
        after_commit: list[float] = []                   # the etcd answer -> disconnected on both
        for i in range(rounds):
            devs = [timed_device(b, f"victim-{i}-{n}") for n, b in enumerate(brokers)]
            for dev, _ in devs:
                assert dev.publish(f"/device/{VICTIM}/t", b"x") == 0
            for load in loads:
                load.phase = "reload"
            t0 = time.perf_counter()
            fleet.device_revoke(VICTIM, "bench")
            t_commit = time.perf_counter()
            committed.append(ms(t_commit - t0))
            done = [gone.get(timeout=30) for _, gone in devs]
            after_commit.append(ms(max(done) - t_commit))
            times = [t - t0 for t in done]
            for n, observer in enumerate(observers):
                sent = observer.kicks.get(timeout=30)
                left_daemon[n].append(ms(sent - t0))
                in_broker[n].append(ms(done[n] - sent))
            for load in loads:
                load.phase = "idle"
            for n, t in enumerate(times):
                per_broker[n].append(ms(t))
            fleet_wide.append(ms(max(times)))
            for dev, _ in devs:
                dev.client.loop_stop()
            for attempt in range(10):  # etcd on a loaded machine may change leaders: not timed
                try:
                    fleet.device_reset(VICTIM)
                    break
                except EtcdError:
                    time.sleep(0.5)
            time.sleep(0.2)
        fleet.etcd.close()
        for observer in observers:
            observer.close()
        print(f"where the time goes: etcd transaction answered: {summary(committed)}")
        for n, name in enumerate("ab"):
            print(f"  kick event out of daemon {name} (etcd watch + apply + Watch stream): "
                  f"{summary(left_daemon[n])}")
            print(f"  broker {name.upper()}, that event -> client saw DISCONNECT (plugin queue, the "
                  f"broker's next tick, kick, TCP): {summary(in_broker[n])}")
        print(f"  the etcd answer -> disconnected on both (daemons + brokers): {summary(after_commit)}")
        print(f"revoke -> disconnect, broker A: {summary(per_broker[0])}")
        print(f"revoke -> disconnect, broker B: {summary(per_broker[1])}")
        print(f"revoke -> disconnected on both (fleet-wide): {summary(fleet_wide)}")
        for name, load in zip("ab", loads):
            print(f"checks on daemon {name}: around revokes {summary(load.latencies['reload'])}; "
                  f"otherwise {summary(load.latencies['idle'])}; failures {load.failures}")
    finally:
        for load in loads:
            load.stop.set()
        for broker in brokers:
            broker.stop()
        for daemon in daemons:
            daemon.stop()
        etcd.stop()
        shutil.rmtree(work, ignore_errors=True)


def file_part(identities: int, rounds: int) -> None:
    import grpc

    from policyd.v1 import policy_pb2 as pb
    from policyd.v1 import policy_pb2_grpc as pb_grpc

    work = make_workdir("policyd-bench-fleetfile-")
    full, without = big_rules(identities, None), big_rules(identities, int(VICTIM[1:]))
    daemon = PolicyDaemon(work, full, "--no-watch", "--log-level", "info").start(timeout=300)
    broker = None
    try:
        pki = Pki(work / "pki").issue_base()
        broker = Broker(work, pki, daemon, BrokerConfig()).start()
        admin = pb_grpc.AdminStub(grpc.insecure_channel(daemon.admin_address))
        times = []
        for i in range(rounds):
            dev, gone = timed_device(broker, f"victim-file-{i}")
            assert dev.publish(f"/device/{VICTIM}/t", b"x") == 0
            daemon.rules.write_text(without)
            t0 = time.perf_counter()
            assert admin.Reload(pb.ReloadRequest(), timeout=120).ok
            times.append(ms(gone.get(timeout=60) - t0))
            dev.client.loop_stop()
            daemon.rules.write_text(full)
            assert admin.Reload(pb.ReloadRequest(), timeout=120).ok
        print(f"file reload of the same policy, revoke -> disconnect (one broker): {summary(times)}")
    finally:
        if broker is not None:
            broker.stop()
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--file-rounds", type=int, default=5)
    args = parser.parse_args()
    fleet_part(args.identities, args.rounds)
    file_part(args.identities, args.file_rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
