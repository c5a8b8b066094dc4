"""The `policyd` command: a thin argparse layer over the engine, server and certs.

Each subcommand lives in a module of this package that registers itself with
`add_subparser(s)`; the work is done by the library it calls.

Exit codes: 0 success / allow, 1 deny or invalid input found, 2 usage or
operational error (unreadable file, daemon unreachable).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .. import __version__, certs
from . import admin_cmds, fleet_cmds, passwd_cmd, policy_cmds, serve_cmd


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="policyd", description=(
        "Topic ACLs for Mosquitto, decided by a policy daemon the broker asks over gRPC."))
    parser.add_argument("--version", action="version", version=f"policyd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_cmd.add_subparser(sub)
    policy_cmds.add_subparsers(sub)
    admin_cmds.add_subparsers(sub)
    fleet_cmds.add_subparsers(sub)
    certs.add_subparser(sub)
    passwd_cmd.add_subparser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
