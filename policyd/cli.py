"""The `policyd` command: thin argparse layer over the engine, server and certs.

Exit codes: 0 success / allow, 1 deny or invalid input found, 2 usage or
operational error (unreadable file, daemon unreachable).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
from typing import Optional, Sequence

from . import __version__
from .engine import Access, PolicyLoadError, Request, compile_policy, read_file

DEFAULT_LISTEN = "unix:/run/policyd/policyd.sock"
DEFAULT_ADMIN = "unix:/run/policyd/policyd-admin.sock"


def _octal(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode such as 0660") from None


def _print_problems(problems, stream=sys.stderr) -> None:
    for problem in problems:
        print(problem, file=stream)


# --- serve -----------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    from .server.serve import ServeOptions, serve

    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return serve(ServeOptions(
        rules=args.rules, listen=args.listen, admin_listen=args.admin_listen,
        socket_mode=args.socket_mode, socket_group=args.socket_group,
        cache_ttl_ms=args.cache_ttl_ms, workers=args.workers))


# --- check / validate ----------------------------------------------------------

def cmd_check(args: argparse.Namespace) -> int:
    try:
        policy = compile_policy(read_file(args.rules))
    except PolicyLoadError as exc:
        _print_problems(exc.problems)
        return 2
    request = Request(args.username, args.clientid, args.topic, Access.parse(args.access))
    decision = policy.explain(request) if args.explain else policy.decide(request)
    print(decision.word)
    print(f"  {decision.reason}" + (f": {decision.rule}" if decision.rule is not None else ""))
    if args.explain:
        print("  rules considered:" if decision.trace else "  no rule considered")
        for step in decision.trace:
            print(f"    {step}")
    return 0 if decision.allowed else 1


def cmd_validate(args: argparse.Namespace) -> int:
    worst = 0
    for path in args.files:
        try:
            spec = read_file(path)
        except PolicyLoadError as exc:
            _print_problems(exc.problems, sys.stdout)
            worst = 1
            continue
        _print_problems(spec.warnings, sys.stdout)
        policy = compile_policy(spec)
        print(f"{path}: ok ({policy.identity_count} identities, {policy.rule_count} rules, "
              f"sha256 {policy.source_sha256[:12]})")
    return worst


# --- admin RPCs -----------------------------------------------------------------

def _admin_stub(address: str):
    import grpc

    from .server import listen
    from .v1 import policy_pb2_grpc as pb_grpc

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
    from .v1 import policy_pb2 as pb

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
    from .v1 import policy_pb2 as pb

    st = _admin_call(args, "Status", pb.StatusRequest())
    if st is None:
        return 2
    loaded = datetime.datetime.fromtimestamp(st.loaded_at, datetime.timezone.utc).isoformat(timespec="seconds")
    print(f"policyd {st.version}")
    print(f"generation: {st.generation}")
    print(f"rules file: {st.rules_file} (sha256 {st.source_sha256})")
    print(f"loaded at:  {loaded}")
    print(f"identities: {st.identities}, rules: {st.rules}")
    if st.last_error:
        print("last reload failed:")
        for p in st.last_error:
            print(f"  {p.file}:{p.line}:{p.column}: {p.key}: {p.message}")
    return 0


# --- parser -----------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="policyd", description=(
        "Topic ACLs for Mosquitto, decided by a policy daemon the broker asks over gRPC."))
    parser.add_argument("--version", action="version", version=f"policyd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the daemon the Mosquitto plugin asks")
    p.add_argument("--rules", required=True, help="rules YAML file")
    p.add_argument("--listen", default=DEFAULT_LISTEN,
                   help=f"gRPC address for the broker: unix:/path.sock or 127.0.0.1:PORT (default {DEFAULT_LISTEN})")
    p.add_argument("--admin-listen", help="address of the admin service (Reload, Status); default: "
                   "a 0600 unix socket next to --listen, named NAME-admin.sock")
    p.add_argument("--socket-mode", type=_octal, default=0o660, help="mode of the --listen unix socket (default 0660)")
    p.add_argument("--socket-group", help="group of the --listen unix socket, e.g. mosquitto")
    p.add_argument("--cache-ttl-ms", type=int, default=5000, help="how long the plugin may cache an answer")
    p.add_argument("--workers", type=int, default=8, help="gRPC worker threads")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check", help="decide one request offline against a rules file")
    p.add_argument("--rules", required=True)
    p.add_argument("--username", help="omit for an anonymous client")
    p.add_argument("--clientid", default="policyd-check")
    p.add_argument("--topic", required=True)
    p.add_argument("--access", required=True, choices=[a.name.lower() for a in Access])
    p.add_argument("--explain", action="store_true", help="show every rule considered and why")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("validate", help="report every problem in rules files (exit 1 on errors)")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_validate)

    for name, func, what in (("reload", cmd_reload, "reload the rules file of a running daemon"),
                             ("status", cmd_status, "show the policy in force in a running daemon")):
        p = sub.add_parser(name, help=what)
        p.add_argument("--address", default=DEFAULT_ADMIN, help=f"admin address (default {DEFAULT_ADMIN})")
        p.add_argument("--timeout", type=float, default=10.0)
        p.set_defaults(func=func)

    from . import certs

    certs.add_subparser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
