"""What metrics, the decision log and dry-run add to one CheckAcl, side by side.

In-process (default): calls PolicyService.CheckAcl directly, so the daemon's
own CPU per check is all that is measured. With --grpc: one real
`policyd serve` per configuration on a unix socket, asked over gRPC in turn by
a sequential client, which is what a broker's shim sees. Seed rules, three
allowed writes to one denied, distinct topics; several interleaved rounds,
best µs per check and the ratio to the plain daemon.

    .venv/bin/python bench/ops_overhead.py [--checks 20000] [--rounds 5] [--grpc]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from policyd.server.logs import DecisionLog, DecisionLogOptions  # noqa: E402
from policyd.server.metrics import Metrics  # noqa: E402
from policyd.server.service import PolicyService  # noqa: E402
from policyd.server.store import PolicyStore  # noqa: E402
from policyd.v1 import policy_pb2 as pb  # noqa: E402


LABELS = {
    "plain": "(a) no --metrics-listen, no decision log",
    "metrics": "(b) --metrics-listen (latency histogram)",
    "log-deny": "(c) (b) + --decision-log FILE --decision-log-filter deny",
    "log-all": "(d) (b) + --decision-log FILE (every decision)",
    "dry-run": "(e) (b) + --dry-run",
}


def requests(n: int) -> list[pb.CheckAclRequest]:
    """Three allowed writes, one denied, distinct topics (no daemon cache involved)."""
    out = []
    for i in range(n):
        user = f"Device{i % 50}"
        owner = user if i % 4 else "Device123"
        out.append(pb.CheckAclRequest(has_username=True, username=user.encode(), client_id=f"{user}-c".encode(),
                                      topic=f"/device/{owner}/sensor/{i}".encode(), access=pb.ACCESS_WRITE))
    return out


def configure(name: str, store: PolicyStore, tmp: Path) -> PolicyService:
    service = PolicyService(store, cache_ttl_ms=5000)
    if name != "plain":
        service.latency = Metrics(store, service.counters, decision_log=None).latency
    if name.startswith("log"):
        only_denials = name == "log-deny"
        service.decision_log = DecisionLog(DecisionLogOptions(str(tmp / f"{name}.jsonl"), only_denials=only_denials))
    if name == "dry-run":
        service.dry_run = True
    return service


def run_once(service: PolicyService, reqs) -> float:
    check = service.CheckAcl
    started = time.perf_counter()
    for r in reqs:
        check(r, None)
    return (time.perf_counter() - started) / len(reqs) * 1e6


FLAGS = {
    "plain": [],
    "metrics": ["--metrics-listen", "127.0.0.1:0"],
    "log-deny": ["--metrics-listen", "127.0.0.1:0", "--decision-log", "{tmp}/log-deny.jsonl",
                 "--decision-log-filter", "deny"],
    "log-all": ["--metrics-listen", "127.0.0.1:0", "--decision-log", "{tmp}/log-all.jsonl"],
    "dry-run": ["--metrics-listen", "127.0.0.1:0", "--dry-run"],
}


def _group() -> list[str]:
    """As root, the daemon refuses a socket the broker's user could not open."""
    import pwd

    try:
        pwd.getpwnam("mosquitto")
    except KeyError:
        return []
    return ["--socket-group", "mosquitto"] if os.geteuid() == 0 else []


def start_daemon(name: str, tmp: Path):
    """`policyd serve` with this configuration's flags; (process, stub, channel)."""
    import subprocess

    import grpc

    from policyd.v1 import policy_pb2_grpc as pb_grpc

    sock = tmp / f"{name}.sock"
    flags = [f.format(tmp=tmp) for f in FLAGS[name]]
    proc = subprocess.Popen([sys.executable, "-m", "policyd", "serve", "--rules", str(ROOT / "examples" / "rules.yaml"),
                             "--listen", f"unix:{sock}", "--log-level", "error", *flags, *_group()], cwd=ROOT)
    deadline = time.monotonic() + 15
    while not sock.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"policyd ({name}) did not start")
        time.sleep(0.05)
    channel = grpc.insecure_channel(f"unix:{sock}")
    return proc, pb_grpc.PolicyStub(channel), channel


def run_grpc_once(stub, reqs) -> float:
    check = stub.CheckAcl
    started = time.perf_counter()
    for r in reqs:
        check(r, timeout=5)
    return (time.perf_counter() - started) / len(reqs) * 1e6


def measure_grpc(names, reqs, rounds: int, tmp: Path) -> dict[str, float]:
    daemons = {n: start_daemon(n, tmp) for n in names}
    try:
        for _, stub, _ in daemons.values():
            run_grpc_once(stub, reqs[:500])  # warm-up
        best = {n: float("inf") for n in names}
        for _ in range(rounds):
            for n in names:
                best[n] = min(best[n], run_grpc_once(daemons[n][1], reqs))
        return best
    finally:
        for proc, _, channel in daemons.values():
            channel.close()
            proc.terminate()
            proc.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checks", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--grpc", action="store_true", help="through real `policyd serve` processes over gRPC")
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # dry-run's rate-limited line is not what is measured
    names = ["plain", "metrics", "log-deny", "log-all", "dry-run"]
    with tempfile.TemporaryDirectory() as tmpdir:
        os.chmod(tmpdir, 0o755)  # the broker's user must be able to reach the socket
        tmp = Path(tmpdir)
        store = PolicyStore(str(ROOT / "examples" / "rules.yaml"))
        assert store.reload("bench").ok
        reqs = requests(args.checks)
        if args.grpc:
            best = measure_grpc(names, reqs, args.rounds, tmp)
            print(f"{args.checks} checks x {args.rounds} rounds, best round, µs per CheckAcl round trip (gRPC, unix socket)")
            print_table(names, best)
            return 0
        services = {n: configure(n, store, tmp) for n in names}
        for s in services.values():
            run_once(s, reqs[:2000])  # warm-up
        best = {n: float("inf") for n in names}
        for _ in range(args.rounds):
            for n in names:
                best[n] = min(best[n], run_once(services[n], reqs))
        dropped = {n: s.decision_log.dropped for n, s in services.items() if s.decision_log}
        for s in services.values():
            if s.decision_log:
                s.decision_log.close()
    print(f"{args.checks} checks x {args.rounds} rounds, best round, µs per CheckAcl (in-process)")
    print_table(names, best)
    print(f"decision log lines dropped (queue full): {dropped}")
    return 0


def print_table(names, best: dict[str, float]) -> None:
    print("| configuration | µs/check | × plain |")
    print("|---|---:|---:|")
    for n in names:
        print(f"| {LABELS[n]} | {best[n]:.1f} | {best[n] / best['plain']:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
