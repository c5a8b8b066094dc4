"""Shared bits of the command line."""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path

from ..fileio import write_atomically

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


class OutputError(Exception):
    """A file the command was asked to write could not be written; the message says why."""


def write_output(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write a command's output file atomically (policyd/fileio.py). Only a regular file or
    a new name is replaced: `-o /dev/null` run as root must not turn a device node into a file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise OutputError(f"{path}: not a regular file; refusing to replace it (write to a file, or "
                          "omit -o for standard output)")
    try:
        write_atomically(Path(path), data, mode=mode)
    except OSError as exc:
        where = exc.filename if exc.filename and exc.filename != path else path
        raise OutputError(f"{where}: cannot write: {exc.strerror or exc}") from None
