"""`policyd passwd USER`: a `passwords:` entry for a password client (docs/identity.md)."""

from __future__ import annotations

import argparse
import getpass
import json
import sys

from ..engine.loader import identity_problem
from ..identity.passwords import (DEFAULT_ITERATIONS, MAX_ITERATIONS, MIN_ITERATIONS, hash_password,
                                  import_password_file)
from .common import EXIT_NO, InputError, OutputError, error, print_problems, read_utf8, write_output


def add_subparser(sub) -> None:
    p = sub.add_parser("passwd", help="hash a password for the rules file's `passwords:` section",
                       description="Reads the password from stdin (first line) or, on a terminal, asks "
                       "for it twice; prints a `USER: \"pbkdf2-sha256$…\"` line for `passwords:`.")
    p.add_argument("username", help="the password client's username (also its %%u in rules)")
    p.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                   help=f"PBKDF2-SHA256 iterations (default {DEFAULT_ITERATIONS}; each CONNECT pays them)")
    p.set_defaults(func=cmd_passwd)

    p = sub.add_parser("import-passwd", help="convert a Mosquitto password_file into a `passwords:` section",
                       description="Reads Mosquitto's password_file ($7$ PBKDF2-SHA512 and $6$ SHA-512 "
                       "hashes, as mosquitto_passwd writes them) and writes the `passwords:` section for the "
                       "rules file: policyd verifies these hashes itself, so password clients keep their "
                       "passwords.")
    p.add_argument("password_file", help="Mosquitto password_file")
    p.add_argument("-o", "--output", help="write the section here, mode 0600 (default: standard output)")
    p.set_defaults(func=cmd_import_passwd)


def cmd_passwd(args: argparse.Namespace) -> int:
    why = identity_problem(args.username)
    if why or not MIN_ITERATIONS <= args.iterations <= MAX_ITERATIONS:
        return error("policyd passwd", why or f"--iterations must be {MIN_ITERATIONS}..{MAX_ITERATIONS}")
    password = _read_password()
    if not password:
        return error("policyd passwd", "empty password (or the two did not match)")
    print(f'{args.username}: "{hash_password(password.encode("utf-8"), args.iterations)}"')
    return 0


def _read_password() -> str | None:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    return first if getpass.getpass("again: ") == first else None


def cmd_import_passwd(args: argparse.Namespace) -> int:
    """Exit 0 converted (warnings on stderr), 1 not convertible (nothing written), 2 unreadable."""
    try:
        text = read_utf8(args.password_file)
    except InputError as exc:
        return exc.report()
    entries, problems = import_password_file(text, args.password_file)
    print_problems(problems)
    if any(p.severity == "error" for p in problems):
        print(f"{args.password_file}: not converted (see the errors above)", file=sys.stderr)
        return EXIT_NO
    name = args.password_file.rsplit("/", 1)[-1]
    out = [f"# Imported from {name} by `policyd import-passwd`: Mosquitto's hashes, verified as Mosquitto",
           "# verifies them. Put this section into the rules file (mode 0640 or tighter).",
           "passwords:" if entries else "passwords: {}"]
    out += [f"  {json.dumps(user)}: {json.dumps(hashed)}  # {name}:{line}" for user, hashed, line in entries]
    data = "\n".join(out) + "\n"
    if args.output:
        try:
            write_output(args.output, data.encode(), 0o600)
        except OutputError as exc:
            return exc.report()
    else:
        sys.stdout.write(data)
    return 0
