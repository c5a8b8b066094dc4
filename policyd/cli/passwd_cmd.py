"""`policyd passwd USER`: a `passwords:` entry for a password client (docs/identity.md)."""

from __future__ import annotations

import argparse
import getpass
import sys

from ..engine.loader import identity_problem
from ..identity.passwords import DEFAULT_ITERATIONS, MAX_ITERATIONS, MIN_ITERATIONS, hash_password


def add_subparser(sub) -> None:
    p = sub.add_parser("passwd", help="hash a password for the rules file's `passwords:` section",
                       description="Reads the password from stdin (first line) or, on a terminal, asks "
                       "for it twice; prints a `USER: \"pbkdf2-sha256$…\"` line for `passwords:`.")
    p.add_argument("username", help="the password client's username (also its %%u in rules)")
    p.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                   help=f"PBKDF2-SHA256 iterations (default {DEFAULT_ITERATIONS}; each CONNECT pays them)")
    p.set_defaults(func=cmd_passwd)


def cmd_passwd(args: argparse.Namespace) -> int:
    why = identity_problem(args.username)
    if why or not MIN_ITERATIONS <= args.iterations <= MAX_ITERATIONS:
        print(f"policyd passwd: {why or f'--iterations must be {MIN_ITERATIONS}..{MAX_ITERATIONS}'}",
              file=sys.stderr)
        return 2
    password = _read_password()
    if not password:
        print("policyd passwd: empty password", file=sys.stderr)
        return 2
    print(f'{args.username}: "{hash_password(password.encode("utf-8"), args.iterations)}"')
    return 0


def _read_password() -> str | None:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    return first if getpass.getpass("again: ") == first else None
