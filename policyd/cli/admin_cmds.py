"""Commands that talk to a running daemon's admin socket: `policyd reload`, `policyd status`."""

from __future__ import annotations

import argparse
import datetime
import sys

from .common import DEFAULT_ADMIN


def add_subparsers(sub) -> None:
    for name, func, what in (("reload", cmd_reload, "reload the rules file of a running daemon"),
                             ("status", cmd_status, "show the policy in force in a running daemon")):
        p = sub.add_parser(name, help=what)
        p.add_argument("--address", default=DEFAULT_ADMIN, help=f"admin address (default {DEFAULT_ADMIN})")
        p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the daemon (default 10)")
        p.set_defaults(func=func)


def _admin_stub(address: str):
    import grpc

    from ..server import listen
    from ..v1 import policy_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(listen.parse(address).target)
    return channel, pb_grpc.AdminStub(channel)


def _admin_call(args: argparse.Namespace, method: str, request):
    import grpc

    channel, stub = _admin_stub(args.address)
    try:
        return getattr(stub, method)(request, timeout=args.timeout)
    except grpc.RpcError as exc:
        print(f"policyd {method.lower()}: cannot reach the daemon at {args.address}: "
              f"{exc.code().name}: {exc.details()}", file=sys.stderr)
        return None
    finally:
        channel.close()


def cmd_reload(args: argparse.Namespace) -> int:
    from ..v1 import policy_pb2 as pb

    answer = _admin_call(args, "Reload", pb.ReloadRequest())
    if answer is None:
        return 2
    for p in answer.problems:
        print(f"{p.file}:{p.line}:{p.column}: {p.key}: {p.message}", file=sys.stderr)
    if answer.ok:
        print(f"reloaded: generation {answer.generation}")
        return 0
    print(f"reload rejected: generation {answer.generation} stays in force", file=sys.stderr)
    return 1


def cmd_status(args: argparse.Namespace) -> int:
    from ..v1 import policy_pb2 as pb

    st = _admin_call(args, "Status", pb.StatusRequest())
    if st is None:
        return 2
    loaded = datetime.datetime.fromtimestamp(st.loaded_at, datetime.timezone.utc).isoformat(timespec="seconds")
    print(f"policyd {st.version}")
    print(f"generation: {st.generation}")
    print(f"rules file: {st.rules_file} (sha256 {st.source_sha256})")
    print(f"loaded at:  {loaded}")
    print(f"identities: {st.identities}, rules: {st.rules}")
    print(f"reloads:    {st.reloads_ok} ok, {st.reloads_failed} rejected")
    if st.dry_run:
        print("mode:       DRY RUN (every check answered allow; would-denials counted and logged)")
    if st.last_error:
        print("last reload failed:")
        for p in st.last_error:
            print(f"  {p.file}:{p.line}:{p.column}: {p.key}: {p.message}")
    else:
        print("last reload: ok")
    _print_shims(st.shims)
    return 0


def _print_shims(shims) -> None:
    connected = sum(1 for s in shims if s.connected)
    print(f"shims:      {connected} connected, {len(shims)} known")
    for s in shims:
        seen = datetime.datetime.fromtimestamp(s.last_seen, datetime.timezone.utc).isoformat(timespec="seconds")
        c = s.stats
        print(f"  {c.broker_id or '?'}: {'connected' if s.connected else 'gone'}, last report {seen}; "
              f"checks {c.checks} (allowed {c.allowed}, denied {c.denied}, errors {c.errors}), "
              f"cache hits {c.cache_hits} misses {c.cache_misses} entries {c.cache_entries}, "
              f"breaker {'OPEN' if c.breaker_open else 'closed'} (opened {c.breaker_opens}x)")


