"""README and docs stay true: every `policyd …` command in a code block parses with the real
argument parser; every synopsis in README's command table names a real command and real
options; and the transcripts that run offline (`$ policyd …` followed by its output) print what
they show."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from harness import POLICYD, ROOT
from policyd.cli import build_parser

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_COMMANDS = re.compile(r"^policyd (\d+\.\d+|\d+ )")  # version output, diagrams


def shown_commands():
    """(file:line, command text) for each `policyd …` in a code block or a command table."""
    for doc in DOCS:
        in_block, pending = False, ""
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            if line.strip().startswith("```"):
                in_block = not in_block
                continue
            where = f"{doc.relative_to(ROOT)}:{number}"
            if in_block:
                text = pending + line.strip()
                pending = ""
                if text.endswith("\\"):
                    pending = text[:-1] + " "
                    continue
                match = re.search(r"(?:^|\$ |sudo )(policyd\s.*)$", text)
                if match:
                    yield where, match.group(1)
            elif doc.name == "README.md" and line.startswith("| `policyd "):  # the command table
                yield where, "synopsis:" + line.split("`")[1]


def normalise(text: str) -> list[str] | None:
    """The argv a command shows, placeholders made concrete; None when it is not a command."""
    text = text.removeprefix("synopsis:")
    text = re.sub(r"\s+#.*$", "", text).split(" | ")[0].strip()
    if NOT_COMMANDS.match(text):
        return None
    text = re.sub(r"(\S)…", r"\1", text).replace("…", "X").replace("[", "").replace("]", "")
    words = shlex.split(text)[1:]
    words = [w.split("|")[0] if "|" in w and not w.startswith("-") else w for w in words]
    return [w for w in words if w]


COMMANDS = [(where, text) for where, text in shown_commands() if normalise(text) is not None]


def test_the_docs_show_commands():
    assert len(COMMANDS) > 15
    shown = {normalise(t)[0] for _, t in COMMANDS}
    assert {"check", "validate", "import-acl", "import-passwd", "certs", "status", "reload", "serve"} <= shown


def _subcommand(parser, argv):
    """The deepest parser the leading words of argv name, and the words left."""
    while argv:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or argv[0] not in actions[0].choices:
            break
        parser, argv = actions[0].choices[argv[0]], argv[1:]
    return parser, argv


@pytest.mark.parametrize("where, text", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_command_shown_parses(where, text, capsys):
    argv = normalise(text)
    if text.startswith("synopsis:"):  # placeholders and shorthand: the command and its options exist
        parser, rest = _subcommand(build_parser(), argv)
        assert parser.prog != "policyd", f"{where}: `{text}` names no command"
        known = {o for a in parser._actions for o in a.option_strings}
        unknown = [w.split("=")[0] for w in rest if w.startswith("-") and w.split("=")[0] not in known]
        assert not unknown, f"{where}: `{text}`: {parser.prog} has no {unknown}"
        return
    try:
        args, extra = build_parser().parse_known_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{where}: `{text}` does not parse: {capsys.readouterr().err.strip()} (exit {exc.code})")
    assert not extra, f"{where}: `{text}`: unrecognized {extra}"


def transcripts():
    """(file:line, command, expected output) for code blocks starting with `$ policyd` whose
    command reads only files of this repository."""
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        for number, line in enumerate(lines):
            if line.startswith("$ policyd ") and lines[number - 1].startswith("```"):
                out = []
                for following in lines[number + 1:]:
                    if following.startswith("```") or following.startswith("$ "):
                        break
                    out.append(following)
                command = line[2:]
                if "examples/" in command and "…" not in "".join(out):
                    yield f"{doc.relative_to(ROOT)}:{number + 1}", command, out


TRANSCRIPTS = list(transcripts())


@pytest.mark.parametrize("where, command, expected", TRANSCRIPTS, ids=[w for w, _, _ in TRANSCRIPTS])
def test_offline_transcripts_print_what_they_show(where, command, expected):
    proc = subprocess.run([*POLICYD, *shlex.split(command)[1:]], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.splitlines() == expected, f"{where}: the docs show something else"


def test_there_is_an_offline_transcript():
    assert TRANSCRIPTS
