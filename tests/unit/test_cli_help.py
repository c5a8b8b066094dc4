"""`--help` everywhere: every command and every option explains itself; `--version` works."""

from __future__ import annotations

import argparse

import pytest

from policyd import __version__
from policyd.cli import build_parser, main


def commands(parser: argparse.ArgumentParser, path=()):
    """(command path, parser) for the top level and every nested subcommand."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, path + (name,))


ALL = list(commands(build_parser()))


def test_every_command_has_a_one_line_summary():
    for action in (a for _, p in ALL for a in p._actions if isinstance(a, argparse._SubParsersAction)):
        for choice in action._choices_actions:
            assert choice.help, f"command {choice.dest} has no help"


@pytest.mark.parametrize("path, parser", ALL, ids=[" ".join(p) or "policyd" for p, _ in ALL])
def test_every_option_has_help(path, parser):
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        assert action.help, f"policyd {' '.join(path)}: {action.option_strings or action.dest} has no help"


@pytest.mark.parametrize("path", [p for p, _ in ALL], ids=[" ".join(p) or "policyd" for p, _ in ALL])
def test_help_prints_and_exits_zero(path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*path, "--help"])
    assert exit_.value.code == 0 and "usage: policyd" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"policyd {__version__}"
