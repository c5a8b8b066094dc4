"""Shared bits of the command line."""

from __future__ import annotations

import argparse
import sys

DEFAULT_LISTEN = "unix:/run/policyd/policyd.sock"
DEFAULT_ADMIN = "unix:/run/policyd/policyd-admin.sock"


def octal_mode(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode such as 0660") from None


def print_problems(problems, stream=None) -> None:
    for problem in problems:
        print(problem, file=stream or sys.stderr)
