"""Offline policy tools: `policyd check`, `validate`, `test`, `import-acl`."""

from __future__ import annotations

import argparse
import sys

from ..engine import Access, PolicyLoadError, Problem, Request, SourceRef, compile_policy, parse_text, read_file
from ..engine.acl_import import import_acl
from ..engine.model import MOSQUITTO, ORDERS
from ..engine.policy_tests import parse_tests, run_tests
from ..engine.loader import MAX_FILE_BYTES
from .common import (DEFAULT_ADMIN, EXIT_ERROR, EXIT_NO, EXIT_OK, InputError, OutputError, add_format, error, print_json,
                     print_problems, problem_json, read_input, read_utf8, write_output)


def add_subparsers(sub) -> None:
    p = sub.add_parser("check", help="decide one request, offline against a rules file or by the daemon",
                       description="Exit 0 allow, 1 deny, 2 no answer (an invalid rules file, an "
                       "unreachable daemon, a usage mistake).")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--rules", help="rules YAML file to decide with (offline)")
    where.add_argument("--address", metavar="ADMIN_ADDRESS",
                       help=f"ask the running daemon's admin socket (e.g. {DEFAULT_ADMIN}): the policy "
                       "in force decides, nothing is cached or counted")
    p.add_argument("--username", help="omit for an anonymous client")
    p.add_argument("--clientid", default="policyd-check", help="client id (for %%c rules)")
    p.add_argument("--topic", required=True, help="topic (write, read) or topic filter (subscribe)")
    p.add_argument("--access", required=True, choices=[a.name.lower() for a in Access],
                   help="what the client does: read = a message is delivered to it, write = it publishes")
    p.add_argument("--explain", action="store_true", help="show every rule considered and why")
    p.add_argument("--dry-run", action="store_true",
                   help="as `serve --dry-run` would: print would-deny instead of deny and exit 0")
    p.add_argument("--attribute", action="append", default=[], metavar="KEY=VALUE",
                   help="a certificate attribute (e.g. OU=sensors), for `certificates:` rules; repeatable")
    p.add_argument("--timeout", type=float, default=10.0, help="with --address: seconds to wait for the daemon")
    add_format(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("validate", help="report every problem in rules files",
                       description="Exit 0 when every file is valid, 1 when one has errors, 2 when one "
                       "cannot be read.")
    p.add_argument("files", nargs="+", metavar="FILE", help="rules YAML files; - reads standard input")
    add_format(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("test", help="run expected decisions (a YAML list) against a rules file",
                       description="Exit 0 when every test passes, 1 when one fails, 2 when the test file "
                       "or the rules file is invalid or unreadable.")
    p.add_argument("testfile", help="YAML list of requests and the decision each expects")
    p.add_argument("--rules", required=True, help="rules YAML file")
    p.add_argument("-v", "--verbose", action="store_true", help="also list the tests that pass")
    add_format(p)
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
    attributes = _attributes(args.attribute)
    if attributes is None:
        return EXIT_ERROR
    access = Access.parse(args.access)
    if args.address:
        return _check_live(args, access, attributes)
    try:
        policy = compile_policy(read_file(args.rules))
    except PolicyLoadError as exc:
        print_problems(exc.problems)
        return EXIT_ERROR
    request = Request(args.username, args.clientid, args.topic, access, attributes)
    decision = policy.explain(request) if args.explain else policy.decide(request)
    rule = str(decision.rule) if decision.rule is not None else ""
    return _report_check(args, decision.allowed, decision.reason, rule, [str(s) for s in decision.trace],
                         {"rules": args.rules})


def _check_live(args: argparse.Namespace, access: Access, attributes) -> int:
    from ..v1 import policy_pb2 as pb
    from .admin_cmds import admin_call

    request = pb.AdminCheckRequest(
        username=args.username or "", has_username=args.username is not None, clientid=args.clientid,
        topic=args.topic, access=int(access), explain=args.explain,
        attributes=[pb.Attribute(name=k, value=v) for k, vs in attributes.items() for v in vs])
    answer = admin_call(args, "Check", request)
    if answer is None:
        return EXIT_ERROR
    return _report_check(args, answer.allowed, answer.reason, answer.rule, list(answer.trace),
                         {"address": args.address, "generation": answer.generation, "daemon_dry_run": answer.dry_run})


def _report_check(args, allowed: bool, reason: str, rule: str, trace: list[str], source: dict) -> int:
    word = "allow" if allowed else "would-deny" if args.dry_run else "deny"
    if args.format == "json":
        document = {"decision": word, "allowed": allowed, "reason": reason, "rule": rule or None, **source}
        if args.explain:
            document["trace"] = trace
        print_json(document)
    else:
        print(word)
        print(f"  {reason}" + (f": {rule}" if rule else ""))
        if args.explain:
            print("  rules considered:" if trace else "  no rule considered")
            for step in trace:
                print(f"    {step}")
    return EXIT_OK if allowed or args.dry_run else EXIT_NO


def _attributes(items: list[str]) -> dict[str, tuple[str, ...]] | None:
    """--attribute KEY=VALUE options as a Request's attributes; None (after a message) if malformed."""
    attributes: dict[str, tuple[str, ...]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            error("policyd check", f"--attribute {item!r}: expected KEY=VALUE, e.g. OU=sensors")
            return None
        attributes[key] = attributes.get(key, ()) + (value,)
    return attributes


LARGE_USERS_SECTION = 1000  # identities from which `validate` says which reader read them


def cmd_validate(args: argparse.Namespace) -> int:
    worst, documents = EXIT_OK, []
    for path in args.files:
        shown = "<stdin>" if path == "-" else path
        try:
            spec = parse_text(read_input(path, MAX_FILE_BYTES + 1), shown)
        except OSError as exc:
            problems, result = [Problem(SourceRef(shown, 0, 0, ""), f"cannot read: {exc.strerror or exc}")], None
            worst = EXIT_ERROR
        except PolicyLoadError as exc:
            problems, result = exc.problems, None
            worst = max(worst, EXIT_NO)
        else:
            policy = compile_policy(spec)
            problems = list(spec.warnings)
            result = {"identities": policy.identity_count, "rules": policy.rule_count,
                      "sha256": policy.source_sha256, "order": policy.order, "reader": spec.reader}
        documents.append({"file": shown, "ok": result is not None, **(result or {}),
                          "problems": [problem_json(p) for p in problems]})
        if args.format == "json":
            continue
        print_problems(problems)
        if result is None:
            continue
        print(f"{shown}: ok ({result['identities']} identities, {result['rules']} rules, "
              f"sha256 {result['sha256'][:12]})")
        if spec.reader != "fast" and len(spec.users) >= LARGE_USERS_SECTION:
            # Only worth saying where it costs: docs/rules.md "Large files" has the form.
            print(f"{shown}: note: the users section is read by the general YAML reader "
                  f"({spec.reader[len('yaml: '):]}); in the regular form it loads several times faster")
    if args.format == "json":
        print_json({"files": documents, "ok": worst == EXIT_OK})
    return worst


def cmd_test(args: argparse.Namespace) -> int:
    try:
        policy = compile_policy(read_file(args.rules))
        cases = parse_tests(read_input(args.testfile, MAX_FILE_BYTES + 1), args.testfile)
    except PolicyLoadError as exc:
        print_problems(exc.problems)
        return EXIT_ERROR
    except OSError as exc:
        return error(args.testfile, f"cannot read: {exc.strerror or exc}")
    outcomes = run_tests(policy, cases)
    failed = [o for o in outcomes if not o.passed]
    if args.format == "json":
        print_json({"rules": args.rules, "tests": args.testfile, "passed": len(outcomes) - len(failed),
                    "failed": len(failed),
                    "results": [{"passed": o.passed, "test": o.describe()} for o in outcomes
                                if args.verbose or not o.passed]})
        return EXIT_NO if failed else EXIT_OK
    for outcome in outcomes:
        if not outcome.passed:
            print(f"FAIL {outcome.describe()}")
        elif args.verbose:
            print(f"ok   {outcome.describe()}")
    print(f"{len(outcomes) - len(failed)} passed, {len(failed)} failed ({args.testfile} against {args.rules})")
    return EXIT_NO if failed else EXIT_OK


def cmd_import_acl(args: argparse.Namespace) -> int:
    """Exit 0 converted (warnings on stderr), 1 not convertible (nothing written), 2 unreadable."""
    try:
        text = read_utf8(args.aclfile)
    except InputError as exc:
        return exc.report()
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    progress = (lambda done, total: print(f"{args.aclfile}: {done}/{total} lines read", file=sys.stderr,
                                          flush=True)) if show else None
    # The output is a valid rules file by construction (the tests load every output they make);
    # `policyd validate` it before putting it in force.
    rules, problems = import_acl(text, args.aclfile, args.order, progress)
    print_problems(problems)
    if rules is None:
        print(f"{args.aclfile}: not converted (see the errors above)", file=sys.stderr)
        return EXIT_NO
    if progress is not None:
        print(f"{args.aclfile}: converted ({len(rules)} bytes)", file=sys.stderr, flush=True)
    if args.output:
        try:
            write_output(args.output, rules.encode(), 0o640)  # never a half-written rules file
        except OutputError as exc:
            return exc.report()
    else:
        sys.stdout.write(rules)
    return 0
