"""Shared bits of the command line: one output convention for every command.

Results go to standard output (with `--format json`, one JSON document); problems go to
standard error, one per line, as `file:line:column: severity: key: message`. Exit codes:

    0  success: allowed, valid, every test passed, reloaded, healthy
    1  the answer is no: denied, problems found, a test failed, reload rejected, last reload failed
    2  no answer: a usage mistake, an unreadable file, an unreachable daemon
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from pathlib import Path

from ..engine.model import Problem, SourceRef
from ..fileio import write_atomically

DEFAULT_LISTEN = "unix:/run/policyd/policyd.sock"
DEFAULT_ADMIN = "unix:/run/policyd/policyd-admin.sock"

EXIT_OK, EXIT_NO, EXIT_ERROR = 0, 1, 2


def octal_mode(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode such as 0660") from None


def print_problems(problems, stream=None) -> None:
    for problem in problems:
        print(problem, file=stream or sys.stderr)


def problem_of_pb(p) -> Problem:
    """A PolicyProblem from the admin socket as the engine's Problem (printed the same way)."""
    return Problem(SourceRef(p.file, p.line, p.column, p.key), p.message, p.severity or "error")


def problem_json(problem: Problem) -> dict:
    r = problem.ref
    return {"file": r.file, "line": r.line, "column": r.column, "severity": problem.severity,
            "key": r.key, "message": problem.message}


def add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="text for people, or one JSON document on standard output")


def print_json(document) -> None:
    print(json.dumps(document, indent=2, sort_keys=True))


def read_input(path: str, limit: int = -1) -> bytes:
    """A file's bytes (up to `limit`), or standard input's for `-`; OSError when unreadable."""
    if path == "-":
        return sys.stdin.buffer.read(limit)
    with open(path, "rb") as fh:
        return fh.read(limit)


def error(where: str, message: str) -> int:
    """Print one problem without a line (`where: error: message`); returns EXIT_ERROR."""
    print(f"{where}: error: {message}", file=sys.stderr)
    return EXIT_ERROR


class FileError(Exception):
    """A file a command was given could not be used: where, and why."""

    def __init__(self, where: str, message: str):
        super().__init__(where, message)
        self.where, self.message = where, message

    def __str__(self) -> str:
        return f"{self.where}: error: {self.message}"

    def report(self) -> int:
        print(self, file=sys.stderr)
        return EXIT_ERROR


class OutputError(FileError):
    """A file the command was asked to write could not be written."""


class InputError(FileError):
    """A file the command was asked to read is unreadable or not UTF-8 text."""


def read_utf8(path: str) -> str:
    """A file's text (standard input for `-`); InputError naming the file otherwise."""
    try:
        return read_input(path).decode("utf-8")
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not valid UTF-8 at byte {exc.start}") from None


def write_output(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write a command's output file atomically (policyd/fileio.py). Only a regular file or
    a new name is replaced: `-o /dev/null` run as root must not turn a device node into a file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise OutputError(path, f"cannot write: {exc.strerror or exc}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise OutputError(path, "not a regular file; refusing to replace it (write to a file, or "
                                "omit -o for standard output)")
    try:
        write_atomically(Path(path), data, mode=mode)
    except OSError as exc:
        where = exc.filename if exc.filename and exc.filename != path else path
        raise OutputError(where, f"cannot write: {exc.strerror or exc}") from None


class HelpFormatter(argparse.HelpFormatter):
    """Every option's default in --help, unless its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default in (None, False, argparse.SUPPRESS, [])
                or action.option_strings == [] or isinstance(action, argparse._VersionAction)):
            return text
        shown = oct(default).replace("0o", "0") if "mode" in action.dest else default
        return f"{text} (default: {shown})" if text else f"default: {shown}"
