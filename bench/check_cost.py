#!/usr/bin/env python3
"""What the daemon spends on a device's first CheckAcl: in process, and over gRPC.

In a reconnect storm each new device costs one check the shim has never seen: its SUBSCRIBE to
`/device/<cn>/#`, carrying its certificate (DER, broker mode: `use_identity_as_username true`)
and want_scopes (the daemon sends its READ/WRITE scopes ahead). This measures that check alone,
for --devices distinct EC P-256 certificates (bench/stack.py's cached PKI, the seed rules),
the certificate caches emptied before each round so every check is a first one:

  in process  PolicyService.CheckAcl on the real request, with the latency histogram of
              `--metrics-listen` attached (what policyd_decision_duration_seconds measures)
  gRPC        the unary round trip from a Python grpc client to a fresh `policyd serve`
              over its unix socket (one daemon per round, so its caches are cold too)

  plugin      with --shim: the plugin's own client (C) in process with tests/shim's stub broker,
              which hands it each device's certificate: what the broker waits for, less its queue

and, to separate the transport from deciding: the same certificate checked again (its parse
cached), an UNSUBSCRIBE without a certificate (no engine work), and an empty ReportStats; over
gRPC, the daemon's CPU per call (/proc, all its threads). With --steps, the first check taken
apart (perf_counter around each step, medians); with --profile, the top of a cProfile of the
in-process first checks.
Wall time (perf_counter), medians of per-round p50/p99; the machine is shared: run it with
nothing heavy beside it, and compare figures from one run.

    .venv/bin/python bench/check_cost.py [--devices 1000] [--rounds 3] [--shim] [--steps] [--profile] [--no-grpc]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from stack import RULES, cached_pki, cpu_seconds, device_names, percentile, start_daemon  # noqa: E402

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402

from policyd.engine import Access, Request  # noqa: E402
from policyd.engine.policy import Identity  # noqa: E402
from policyd.engine.scope import cache_scope, more_scopes  # noqa: E402
from policyd.identity import certificate  # noqa: E402
from policyd.identity.verify import checked_client  # noqa: E402
from policyd.server.metrics import Metrics  # noqa: E402
from policyd.server.service import PolicyService  # noqa: E402
from policyd.server.store import PolicyStore  # noqa: E402
from policyd.v1 import policy_pb2 as pb  # noqa: E402
from policyd.v1 import policy_pb2_grpc as pb_grpc  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from harness import make_workdir  # noqa: E402


def first_check(cn: str, der: bytes) -> pb.CheckAclRequest:
    """What the plugin sends for a new device's SUBSCRIBE under use_identity_as_username."""
    return pb.CheckAclRequest(has_username=True, username=cn.encode(), client_id=cn.encode(),
                              topic=f"/device/{cn}/#".encode(), access=pb.ACCESS_SUBSCRIBE,
                              provenance=pb.PROVENANCE_CERTIFICATE, certificate_der=der,
                              identity_mode=pb.IDENTITY_MODE_BROKER, want_scopes=True)


UNSUBSCRIBE = pb.CheckAclRequest(has_username=True, username=b"Device1", client_id=b"Device1",
                                 topic=b"/device/Device1/#", access=pb.ACCESS_UNSUBSCRIBE,
                                 provenance=pb.PROVENANCE_UNKNOWN)


def forget_certificates() -> None:
    """Every check after this is a first one (the daemon's caches by DER bytes are emptied)."""
    for fn in (certificate.read_certificate, getattr(certificate, "_issued_by_pinned", None)):
        if fn is not None and hasattr(fn, "cache_clear"):
            fn.cache_clear()


def quantiles_us(samples: list[float]) -> tuple[float, float]:
    return percentile(samples, 50) * 1e6, percentile(samples, 99) * 1e6


def timed(fn, items) -> list[float]:
    out = []
    clock = time.perf_counter
    for item in items:
        t0 = clock()
        fn(item)
        out.append(clock() - t0)
    return out


def in_process_service(workdir: Path) -> PolicyService:
    rules = workdir / "rules.yaml"
    rules.write_text(RULES)
    store = PolicyStore(str(rules))
    store.start()
    service = PolicyService(store, 5000)
    service.latency = Metrics(store, service.counters).latency  # as with --metrics-listen
    return service


def in_process(service: PolicyService, requests: list[pb.CheckAclRequest]) -> dict[str, list[float]]:
    forget_certificates()
    first = timed(lambda r: service.CheckAcl(r, None), requests)
    again = timed(lambda r: service.CheckAcl(r, None), requests)
    return {"first": first, "again": again,
            "unsubscribe": timed(lambda r: service.CheckAcl(r, None), [UNSUBSCRIBE] * len(requests))}


def over_grpc(requests: list[pb.CheckAclRequest], shim: bool) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Round trips (s) by case, and the daemon's CPU µs per call by case."""
    import grpc

    workdir = make_workdir("policyd-checkcost-")
    daemon = start_daemon(workdir, "--metrics-listen", "127.0.0.1:0")
    out: dict[str, list[float]] = {}
    cpu: dict[str, float] = {}

    def case(name: str, fn, items) -> None:
        c0 = cpu_seconds(daemon.proc.pid)
        out[name] = timed(fn, items)
        cpu[name] = (cpu_seconds(daemon.proc.pid) - c0) / len(items) * 1e6

    try:
        with grpc.insecure_channel(daemon.address) as channel:
            stub = pb_grpc.PolicyStub(channel)
            for _ in range(200):  # the connection, the server's threads, the stub: warm
                stub.ReportStats(pb.ShimStats(broker_id="bench"))
                stub.CheckAcl(UNSUBSCRIBE)
            case("first", stub.CheckAcl, requests)
            case("again", stub.CheckAcl, requests)
            case("unsubscribe", stub.CheckAcl, [UNSUBSCRIBE] * len(requests))
            case("report_stats", stub.ReportStats, [pb.ShimStats(broker_id="bench")] * len(requests))
        if shim:
            trips, used = plugin_checks(daemon, workdir, requests)
            out.update(trips)
            cpu.update(used)
    finally:
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return out, cpu


def plugin_checks(daemon, workdir: Path, requests: list[pb.CheckAclRequest]) -> tuple[dict, dict]:
    """The plugin's own gRPC client (C), in process with tests/shim's stub broker handing it each
    device's certificate: every device's first check (SUBSCRIBE, certificate, want_scopes: what a
    storm's new device costs), then with the cache off the same device's WRITE to its own topic
    again and again (one round trip each, the certificate's parse cached in the daemon)."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "shim"))
    from harness import wait_for
    from shimlib import SUBSCRIBE, WRITE, Shim, build_stub, ffi

    stub = build_stub(Path(tempfile.mkdtemp(dir=workdir)))
    out = ffi.new("int64_t[]", len(requests))
    one = ffi.new("int64_t[]", 1)
    first: list[float] = []
    cpu: dict[str, float] = {}
    options = {"policyd_address": daemon.address, "policyd_timeout_ms": "1000"}
    shim = Shim(stub, options)
    try:
        for i, req in enumerate(requests):
            assert shim.stub.stub_set_certificate(req.certificate_der, len(req.certificate_der)) == 0
            dev = shim.client(req.client_id, req.username)
            if i == 0:  # the link up and warm
                wait_for(lambda: shim.allowed(dev, WRITE, req.topic[:-1] + b"warm"), 10, "first answer")
                dev = shim.client(req.client_id, req.username)
                c0 = cpu_seconds(daemon.proc.pid)
            assert shim.stub.stub_acl_check_timed(dev, SUBSCRIBE, req.topic, 1, one) == 1
            first.append(one[0] / 1e9)
        cpu["plugin_first"] = (cpu_seconds(daemon.proc.pid) - c0) / len(requests) * 1e6
    finally:
        shim.close()
    shim = Shim(stub, {**options, "policyd_cache_size": "0"})
    try:
        req = requests[0]
        shim.stub.stub_set_certificate(req.certificate_der, len(req.certificate_der))
        dev = shim.client(req.client_id, req.username)
        own = req.topic[:-1] + b"t"
        wait_for(lambda: shim.allowed(dev, WRITE, own), 10, "first answer")
        c0 = cpu_seconds(daemon.proc.pid)
        assert shim.stub.stub_acl_check_timed(dev, WRITE, own, len(requests), out) == len(requests)
        cpu["plugin_again"] = (cpu_seconds(daemon.proc.pid) - c0) / len(requests) * 1e6
        return {"plugin_first": first, "plugin_again": [out[i] / 1e9 for i in range(len(requests))]}, cpu
    finally:
        shim.close()


def sections(service: PolicyService, requests: list[pb.CheckAclRequest]) -> dict[str, list[float]]:
    """The first check's steps one after the other, each timed on its own (cold caches)."""
    forget_certificates()
    clock = time.perf_counter
    out: dict[str, list[float]] = {k: [] for k in (
        "parse (read_certificate)", "identify (revoked, pin, expiry, name)", "checked_client (rest)",
        "identity and rule sets (Identity.of, stages)", "decide", "cache_scope", "more_scopes",
        "response protobuf", "histogram observe")}
    policy = service.store.current
    for req in requests:
        t0 = clock()
        certificate.read_certificate(req.certificate_der)
        t1 = clock()
        certificate.identify(req.certificate_der, policy.identity, source="cn")
        t2 = clock()
        client = checked_client(req, policy)
        t3 = clock()
        subject = Request(req.username, req.client_id, req.topic, Access(req.access), client.attributes)
        ident = Identity.of(req.username, req.client_id)
        stages = policy.stages(ident, client.attributes)
        t3b = clock()
        decision = policy.decide(subject, ident, stages)
        t4 = clock()
        scope = cache_scope(policy, subject, decision, ident, stages)
        t5 = clock()
        found = more_scopes(policy, subject, ident=ident, stages=stages)
        t6 = clock()
        pb.CheckAclResponse(result=pb.RESULT_ALLOW, generation=policy.generation, cache_ttl_ms=5000,
                            rule=str(decision.rule) if decision.rule is not None else decision.reason,
                            cache_scope=(scope or "").encode(),
                            more_scopes=[pb.ScopeGrant(access=int(a), scope=s.encode()) for a, s in found])
        t7 = clock()
        service.latency.observe(t7 - t6)
        t8 = clock()
        for key, dt in zip(out, (t1 - t0, t2 - t1, t3 - t2, t3b - t3, t4 - t3b, t5 - t4, t6 - t5, t7 - t6, t8 - t7)):
            out[key].append(dt)
    return out


def profile(service: PolicyService, requests: list[pb.CheckAclRequest], top: int) -> str:
    forget_certificates()
    prof = cProfile.Profile()
    prof.enable()
    for req in requests:
        service.CheckAcl(req, None)
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-grpc", action="store_true", help="in process only")
    ap.add_argument("--profile", action="store_true", help="cProfile the in-process first checks")
    ap.add_argument("--steps", action="store_true", help="the in-process first check step by step")
    ap.add_argument("--shim", action="store_true", help="also the plugin's own client (C): cache-off misses")
    args = ap.parse_args()
    pki = cached_pki(args.devices)
    names = device_names(args.devices)
    ders = {cn: x509.load_pem_x509_certificate((pki.dir / f"{cn}.pem").read_bytes()).public_bytes(Encoding.DER)
            for cn in names}
    requests = [first_check(cn, ders[cn]) for cn in names]

    workdir = make_workdir("policyd-checkcost-")
    service = in_process_service(workdir)
    answer = service.CheckAcl(requests[0], None)  # the benchmark measures the real answer or nothing
    assert answer.result == pb.RESULT_ALLOW and len(answer.more_scopes) == 2, answer
    runs: dict[str, list[dict]] = {"in process": [], "gRPC": []}
    daemon_cpu: list[dict[str, float]] = []
    for _ in range(args.rounds):
        runs["in process"].append(in_process(service, requests))
        if not args.no_grpc:
            trips, cpu = over_grpc(requests, args.shim)
            runs["gRPC"].append(trips)
            daemon_cpu.append(cpu)

    print(f"first CheckAcl of {args.devices} new device certificates (SUBSCRIBE /device/<cn>/#, want_scopes, "
          f"broker mode); medians over {args.rounds} rounds of each round's p50 / p99, µs")
    print(f"| {'path':10} | {'case':46} | {'p50 µs':>8} | {'p99 µs':>8} | {'daemon CPU µs/call':>18} |")
    print(f"|{'-' * 12}|{'-' * 48}|{'-' * 9}:|{'-' * 9}:|{'-' * 19}:|")
    cases = {"first": "first check of a new certificate", "again": "same certificate again (parse cached)",
             "unsubscribe": "UNSUBSCRIBE, no certificate (no engine)", "report_stats": "empty ReportStats",
             "plugin_first": "plugin (C): first check of a new certificate",
             "plugin_again": "plugin (C): same certificate again, cache off"}
    for path, rounds in runs.items():
        for case, label in cases.items():
            if not rounds or case not in rounds[0]:
                continue
            q = [quantiles_us(r[case]) for r in rounds]
            cpu = f"{statistics.median(c[case] for c in daemon_cpu):18.0f}" if path == "gRPC" else " " * 18
            print(f"| {path:10} | {label:46} | {statistics.median(p[0] for p in q):8.1f} "
                  f"| {statistics.median(p[1] for p in q):8.1f} | {cpu} |")
    if args.steps:
        parts = sections(service, requests)
        total = sum(statistics.median(v) for v in parts.values())
        print(f"\nthe first check in process, step by step (median µs of {args.devices}; sum {total * 1e6:.1f} µs)")
        for key, values in parts.items():
            print(f"  {key:44} {statistics.median(values) * 1e6:8.1f}")
    if args.profile:
        print(profile(service, requests, 25))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
