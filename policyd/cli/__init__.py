"""The `policyd` command: a thin argparse layer over the engine, server and certs.

Each subcommand lives in a module of this package that registers itself with
`add_subparser(s)`; the work is done by the library it calls. Every command
follows one convention (common.py): results on stdout, problems on stderr as
`file:line:column: severity: key: message`, exit 0 yes / 1 no / 2 no answer.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from .. import __version__, certs
from . import admin_cmds, fleet_cmds, passwd_cmd, policy_cmds, serve_cmd
from .common import EXIT_ERROR, HelpFormatter


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
    return _conventions(parser)


def _parsers(parser: argparse.ArgumentParser):
    """The parser and every subcommand's, depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from _parsers(child)


def _conventions(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    for each in _parsers(parser):
        each.formatter_class = HelpFormatter
        each.set_defaults(_parser=each)  # the deepest one wins: a mistake gets that command's usage
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        args._parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe can still be handled
        return code
    except BrokenPipeError:
        # `policyd status | head -2`: the reader has gone; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
