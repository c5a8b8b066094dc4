#!/usr/bin/env python3
"""CONNECT cost of identity mode vs broker mode, side by side in one run (issue 6).

One policyd, two real TLS brokers with the plugin: (a) broker mode
(`use_identity_as_username true`, the plugin sees no CONNECT) and (b) identity
mode (`auth_opt_policyd_identity cert`: one Authenticate round trip per CONNECT,
certificate parsed and mapped by policyd). A paho MQTT v5 client with a device
certificate connects, waits for CONNACK and disconnects, alternating between
the brokers, --rounds times each. Reported: median and p90 CONNECT-to-CONNACK
wall time per mode, and (b)/(a). Also (c): policyd's Authenticate alone,
in-process, certificate mapping per call, and (d) a password check at the
default PBKDF2 iterations.

    .venv/bin/python bench/connect_identity.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness import Broker, BrokerConfig, Device, Pki, PolicyDaemon, make_workdir  # noqa: E402

RULES = "patterns:\n  - topic: /device/%u/#\n    access: readwrite\n"


def connect_ms(broker: Broker, client_id: str) -> float:
    dev = Device(broker, "Device123", client_id=client_id)
    started = time.perf_counter()
    dev.connect()
    elapsed = (time.perf_counter() - started) * 1000
    dev.close()
    return elapsed


def in_process(rounds: int) -> tuple[float, float]:
    from policyd.engine import compile_policy, parse_text
    from policyd.identity.authenticate import Authenticator
    from policyd.identity.passwords import hash_password, parse_hash, verify
    from policyd.server.service import Counters
    from policyd.v1 import policy_pb2 as pb

    class Store:
        current = compile_policy(parse_text(RULES.encode()))

    pem = Path(PKI_DIR, "Device123.pem").read_bytes()
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    auth = Authenticator(Store(), Counters())
    request = pb.AuthenticateRequest(client_id=b"c", certificate_der=der)
    started = time.perf_counter()
    for _ in range(rounds):
        auth.authenticate(request)
    cert_us = (time.perf_counter() - started) / rounds * 1e6
    users = {"alice": parse_hash(hash_password(b"pw"))}
    started = time.perf_counter()
    for _ in range(min(rounds, 100)):
        verify(users, "alice", b"pw")
    password_us = (time.perf_counter() - started) / min(rounds, 100) * 1e6
    return cert_us, password_us


PKI_DIR = ""


def main() -> int:
    global PKI_DIR
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    work = make_workdir("policyd-bench-")
    try:
        pki = Pki(work / "pki").issue_base()
        pki.device("Device123")
        PKI_DIR = str(pki.dir)
        daemon = PolicyDaemon(work, RULES).start()
        brokers = {}
        for name, config in (("a", BrokerConfig()), ("b", BrokerConfig(
                use_identity_as_username=False, extra="auth_opt_policyd_identity cert"))):
            (work / name).mkdir()
            (work / name).chmod(0o755)
            brokers[name] = Broker(work / name, pki, daemon, config).start()
        times: dict[str, list[float]] = {"a": [], "b": []}
        for i in range(args.rounds):
            for name, broker in brokers.items():
                times[name].append(connect_ms(broker, f"bench-{name}-{i}"))
        for broker in brokers.values():
            broker.stop()
        daemon.stop()
        cert_us, password_us = in_process(args.rounds * 10)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    p90 = {k: statistics.quantiles(v, n=10)[-1] for k, v in times.items()}
    print(f"(a) broker mode    CONNECT median {med['a']:.2f} ms  p90 {p90['a']:.2f} ms")
    print(f"(b) identity mode  CONNECT median {med['b']:.2f} ms  p90 {p90['b']:.2f} ms  "
          f"(b)/(a) median {med['b'] / med['a']:.2f}")
    print(f"(c) Authenticate in-process, certificate: {cert_us:.0f} µs per call")
    print(f"(d) password check, default PBKDF2 iterations: {password_us:.0f} µs per call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
