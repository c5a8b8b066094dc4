"""Offline policy tools: `policyd check`, `policyd validate`."""

from __future__ import annotations

import argparse
import sys

from ..engine import Access, PolicyLoadError, Request, compile_policy, read_file
from .common import print_problems


def add_subparsers(sub) -> None:
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


def cmd_check(args: argparse.Namespace) -> int:
    try:
        policy = compile_policy(read_file(args.rules))
    except PolicyLoadError as exc:
        print_problems(exc.problems)
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
            print_problems(exc.problems, sys.stdout)
            worst = 1
            continue
        print_problems(spec.warnings, sys.stdout)
        policy = compile_policy(spec)
        print(f"{path}: ok ({policy.identity_count} identities, {policy.rule_count} rules, "
              f"sha256 {policy.source_sha256[:12]})")
    return worst


