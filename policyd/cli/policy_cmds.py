"""Offline policy tools: `policyd check`, `validate`, `test`, `import-acl`."""

from __future__ import annotations

import argparse
import sys

from ..engine import Access, PolicyLoadError, Request, compile_policy, parse_text, read_file
from ..engine.acl_import import import_acl
from ..engine.policy_tests import parse_tests, run_tests
from ..engine.model import MOSQUITTO, ORDERS
from .common import OutputError, print_problems, write_output


def add_subparsers(sub) -> None:
    p = sub.add_parser("check", help="decide one request offline against a rules file")
    p.add_argument("--rules", required=True, help="rules YAML file")
    p.add_argument("--username", help="omit for an anonymous client")
    p.add_argument("--clientid", default="policyd-check", help="client id (for %%c rules; default policyd-check)")
    p.add_argument("--topic", required=True, help="topic (write, read) or topic filter (subscribe)")
    p.add_argument("--access", required=True, choices=[a.name.lower() for a in Access],
                   help="what the client does: read = a message is delivered to it, write = it publishes")
    p.add_argument("--explain", action="store_true", help="show every rule considered and why")
    p.add_argument("--dry-run", action="store_true",
                   help="as `serve --dry-run` would: print would-deny instead of deny and exit 0")
    p.add_argument("--attribute", action="append", default=[], metavar="KEY=VALUE",
                   help="a certificate attribute (e.g. OU=sensors), for `certificates:` rules; repeatable")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("validate", help="report every problem in rules files (exit 1 on errors)")
    p.add_argument("files", nargs="+", help="rules YAML files")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("test", help="run expected decisions (a YAML list) against a rules file")
    p.add_argument("testfile", help="YAML list of requests and the decision each expects")
    p.add_argument("--rules", required=True, help="rules YAML file")
    p.add_argument("-v", "--verbose", action="store_true", help="also list the tests that pass")
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("import-acl", help="convert a Mosquitto acl_file into rules YAML, keeping its decisions")
    p.add_argument("aclfile", help="Mosquitto acl_file to convert")
    p.add_argument("-o", "--output", help="write the rules here, mode 0640 (default: standard output)")
    p.add_argument("--order", choices=ORDERS, default=MOSQUITTO,
                   help="rule order of the output: mosquitto (default) decides exactly as the acl_file; "
                        "deny-first (policyd's default: any deny wins, SUBSCRIBE filters checked) where "
                        "that decides every publish and delivery the same, an error otherwise")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="report progress on standard error every 100,000 lines (default: when it is a terminal)")
    p.set_defaults(func=cmd_import_acl)


def cmd_check(args: argparse.Namespace) -> int:
    try:
        policy = compile_policy(read_file(args.rules))
    except PolicyLoadError as exc:
        print_problems(exc.problems)
        return 2
    attributes = _attributes(args.attribute)
    if attributes is None:
        return 2
    request = Request(args.username, args.clientid, args.topic, Access.parse(args.access), attributes)
    decision = policy.explain(request) if args.explain else policy.decide(request)
    print("would-deny" if args.dry_run and not decision.allowed else decision.word)
    print(f"  {decision.reason}" + (f": {decision.rule}" if decision.rule is not None else ""))
    if args.explain:
        print("  rules considered:" if decision.trace else "  no rule considered")
        for step in decision.trace:
            print(f"    {step}")
    return 0 if decision.allowed or args.dry_run else 1


def _attributes(items: list[str]) -> dict[str, tuple[str, ...]] | None:
    """--attribute KEY=VALUE options as a Request's attributes; None (after a message) if malformed."""
    attributes: dict[str, tuple[str, ...]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"--attribute {item!r}: expected KEY=VALUE, e.g. OU=sensors", file=sys.stderr)
            return None
        attributes[key] = attributes.get(key, ()) + (value,)
    return attributes


LARGE_USERS_SECTION = 1000  # identities from which `validate` says which reader read them


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
        if spec.reader != "fast" and len(spec.users) >= LARGE_USERS_SECTION:
            # Only worth saying where it costs: docs/rules.md "Large files" has the form.
            print(f"{path}: note: the users section is read by the general YAML reader "
                  f"({spec.reader[len('yaml: '):]}); in the regular form it loads several times faster")
    return worst


def cmd_test(args: argparse.Namespace) -> int:
    """Exit 0 when every test passes, 1 when one fails, 2 when an input is invalid."""
    try:
        policy = compile_policy(read_file(args.rules))
        with open(args.testfile, "rb") as fh:
            cases = parse_tests(fh.read(), args.testfile)
    except PolicyLoadError as exc:
        print_problems(exc.problems)
        return 2
    except OSError as exc:
        print(f"{args.testfile}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return 2
    outcomes = run_tests(policy, cases)
    failed = [o for o in outcomes if not o.passed]
    for outcome in outcomes:
        if not outcome.passed:
            print(f"FAIL {outcome.describe()}")
        elif args.verbose:
            print(f"ok   {outcome.describe()}")
    print(f"{len(outcomes) - len(failed)} passed, {len(failed)} failed ({args.testfile} against {args.rules})")
    return 1 if failed else 0


def cmd_import_acl(args: argparse.Namespace) -> int:
    """Exit 0 converted (warnings on stderr), 1 not convertible (nothing written), 2 unreadable."""
    try:
        with open(args.aclfile, "rb") as fh:
            text = fh.read().decode("utf-8")
    except OSError as exc:
        print(f"{args.aclfile}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as exc:
        print(f"{args.aclfile}: not valid UTF-8 at byte {exc.start}", file=sys.stderr)
        return 2
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    progress = (lambda done, total: print(f"{args.aclfile}: {done}/{total} lines read", file=sys.stderr,
                                          flush=True)) if show else None
    # The output is a valid rules file by construction (the tests load every output they make);
    # `policyd validate` it before putting it in force.
    rules, problems = import_acl(text, args.aclfile, args.order, progress)
    print_problems(problems)
    if rules is None:
        print(f"{args.aclfile}: not converted (see the errors above)", file=sys.stderr)
        return 1
    if progress is not None:
        print(f"{args.aclfile}: converted ({len(rules)} bytes)", file=sys.stderr, flush=True)
    if args.output:
        try:
            write_output(args.output, rules.encode(), 0o640)  # never a half-written rules file
        except OutputError as exc:
            print(exc, file=sys.stderr)
            return 2
    else:
        sys.stdout.write(rules)
    return 0
