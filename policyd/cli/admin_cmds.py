"""Commands that talk to a running daemon's admin socket: `policyd reload`, `policyd status`."""

from __future__ import annotations

import argparse
import datetime
import sys

from .common import (DEFAULT_ADMIN, EXIT_ERROR, EXIT_NO, EXIT_OK, add_format, error, print_json, print_problems,
                     problem_json, problem_of_pb)


def add_subparsers(sub) -> None:
    for name, func, what, exits in (
            ("reload", cmd_reload, "reload the rules file of a running daemon",
             "Exit 0 reloaded (or unchanged), 1 rejected (the policy in force stays), 2 no answer."),
            ("status", cmd_status, "show the policy in force in a running daemon",
             "Exit 0 healthy, 1 when the last reload was rejected, 2 no answer.")):
        p = sub.add_parser(name, help=what, description=exits)
        add_admin_options(p)
        add_format(p)
        p.set_defaults(func=func)


def add_admin_options(p) -> None:
    if not any(a.dest == "address" for a in p._actions):
        p.add_argument("--address", default=DEFAULT_ADMIN, help="admin address of the daemon")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the daemon")


def admin_call(args: argparse.Namespace, method: str, request):
    """The daemon's answer, or None after a one-line problem on stderr (no traceback: a wrong
    address or a daemon that is down is an operator's everyday mistake)."""
    import grpc

    from ..server import listen
    from ..v1 import policy_pb2_grpc as pb_grpc

    try:
        target = listen.parse(args.address).target
    except (ValueError, listen.ListenError) as exc:
        error(args.address, f"not an admin address ({exc}); e.g. {DEFAULT_ADMIN}")
        return None
    channel = grpc.insecure_channel(target)
    try:
        return getattr(pb_grpc.AdminStub(channel), method)(request, timeout=args.timeout)
    except grpc.RpcError as exc:
        error(args.address, f"cannot reach the daemon: {exc.code().name}: {exc.details()}")
        return None
    finally:
        channel.close()


def cmd_reload(args: argparse.Namespace) -> int:
    from ..v1 import policy_pb2 as pb

    answer = admin_call(args, "Reload", pb.ReloadRequest())
    if answer is None:
        return EXIT_ERROR
    problems = [problem_of_pb(p) for p in answer.problems]
    if args.format == "json":
        print_json({"ok": answer.ok, "generation": answer.generation,
                    "problems": [problem_json(p) for p in problems]})
        return EXIT_OK if answer.ok else EXIT_NO
    print_problems(problems)
    if answer.ok:
        print(f"reloaded: generation {answer.generation}")
        return EXIT_OK
    print(f"reload rejected: generation {answer.generation} stays in force", file=sys.stderr)
    return EXIT_NO


def cmd_status(args: argparse.Namespace) -> int:
    from ..v1 import policy_pb2 as pb

    st = admin_call(args, "Status", pb.StatusRequest())
    if st is None:
        return EXIT_ERROR
    verdict = EXIT_NO if st.last_error else EXIT_OK
    if args.format == "json":
        document = message_json(st)
        document["last_error"] = [problem_json(problem_of_pb(p)) for p in st.last_error]
        document["healthy"] = verdict == EXIT_OK
        print_json(document)
        return verdict
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
            print(f"  {problem_of_pb(p)}")
    else:
        print("last reload: ok")
    _print_shims(st.shims)
    return verdict


def message_json(message) -> dict:
    """A protobuf message as plain JSON values (numbers stay numbers, every field present)."""
    out = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None:
            out[field.name] = [message_json(v) for v in value] if field.is_repeated else message_json(value)
        elif isinstance(value, bytes):
            out[field.name] = value.decode("utf-8", "replace")
        else:
            out[field.name] = list(value) if field.is_repeated else value
    return out


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


