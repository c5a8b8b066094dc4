"""Mosquitto `acl_file` → policyd rules YAML, keeping every decision Mosquitto makes.

Read the way Mosquitto 2.0 reads it (src/security_default.c): a line starting
with `#` is a comment; fields are separated by spaces; `topic [ACCESS] TOPIC`
and `pattern [ACCESS] TOPIC` (no access word = readwrite); `user NAME` starts a
user's block; `topic` lines before the first `user` line are the anonymous
clients' rules. Anything Mosquitto refuses to start with is an error here too.

Translation, and why it is exact:
  * `topic` lines are literal in Mosquitto (`%u` there is the text "%u"): they
    are written with every `%` escaped as `%%`, and a `%u`/`%c` gets a warning.
  * `pattern` lines go to `patterns:`; those without `%u` also apply to
    anonymous clients in Mosquitto, so they are copied into `anonymous:`.
  * Mosquitto checks a user's own rules (denies first) before any pattern, so a
    user `topic` allow beats a pattern `deny`; policyd's deny wins everywhere.
    Where the two can meet on one topic the file cannot be translated: error.
  * What policyd cannot express is an error, never a guess: patterns without
    `%u`/`%c` (they apply to every client), templates inside a level
    (`dev%u`), identity names policyd refuses, filters MQTT does not allow.
Remaining differences (SUBSCRIBE checks, hostile identities) are the ones
docs/rules.md lists for every policy; they are not import-specific.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional

from . import topics
from .loader import identity_problem
from .model import Problem, SourceRef
from .templates import TEMPLATES, escape

ACCESS = ("read", "write", "readwrite", "deny")  # the words Mosquitto accepts
_WHITESPACE = " \t\n\r\v\f"


@dataclass(frozen=True)
class AclLine:
    """One `topic` or `pattern` line of an acl_file."""

    kind: str                # "topic" | "pattern"
    access: str              # read | write | readwrite | deny
    topic: str               # as Mosquitto keeps it (trimmed)
    user: Optional[str]      # the block it is in; None = before the first `user` line
    line: int


@dataclass
class AclFile:
    file: str
    lines: list[AclLine] = field(default_factory=list)
    users: list[str] = field(default_factory=list)  # in order of first appearance
    problems: list[Problem] = field(default_factory=list)

    def at(self, line: int, message: str, severity: str = "error", key: str = "") -> None:
        self.problems.append(Problem(SourceRef(self.file, line, 1, key), message, severity))

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)


def parse_acl(text: str, file: str = "<acl_file>") -> AclFile:
    """Parse acl_file text as Mosquitto 2.0 does, collecting every problem."""
    acl = AclFile(file)
    user: Optional[str] = None
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip(_WHITESPACE)
        if line.startswith("#"):
            continue
        head, _, rest = line.lstrip(" ").partition(" ")
        if not head:
            continue
        if head in ("topic", "pattern"):
            parsed = _rule_fields(rest)
            if parsed is None:
                acl.at(number, f"`{head}` without a topic (Mosquitto refuses this file)")
                continue
            access, topic = parsed
            if access not in ACCESS:
                acl.at(number, f"invalid access {access!r} (read, write, readwrite, deny; "
                               "Mosquitto refuses this file)")
                continue
            acl.lines.append(AclLine(head, access, topic, user, number))
        elif head == "user":
            name = rest.strip(_WHITESPACE)
            if not name:
                acl.at(number, "`user` without a name (Mosquitto refuses this file)")
                continue
            user = name
            if name not in acl.users:
                acl.users.append(name)
        else:
            acl.at(number, f"invalid line starting {head[:40]!r}: expected topic, pattern or user "
                           "separated by spaces (Mosquitto refuses this file)")
    return acl


def _rule_fields(rest: str) -> Optional[tuple[str, str]]:
    """(access, topic) of what follows `topic`/`pattern`; one field alone is a readwrite topic."""
    rest = rest.lstrip(" ")
    if not rest:
        return None
    first, sep, topic = rest.partition(" ")
    topic = topic.strip(_WHITESPACE)
    if not sep or not topic:
        return "readwrite", first
    return first, topic


# --- translation -----------------------------------------------------------


@dataclass(frozen=True)
class Translated:
    """A rule as it will be written: escaped topic, access, origin line."""

    topic: str
    access: str
    line: int
    levels: tuple[str, ...]  # for conflict checks: literal levels, templates as "%u"/"%c" tokens
    note: str = ""


def _literal(acl: AclFile, rule: AclLine) -> Optional[Translated]:
    if not _valid_filter(acl, rule):
        return None
    note = ""
    if any(t in rule.topic for t in TEMPLATES):
        note = "%u/%c literal as in Mosquitto"
        acl.at(rule.line, f"{rule.topic!r}: %u and %c are not substituted in a Mosquitto `topic` line; kept "
                          f"literal (written {escape(rule.topic)!r}). Use a `pattern` line if substitution "
                          "was meant", "warning")
    levels = tuple("\x00" + lv if lv in TEMPLATES else lv for lv in topics.split(rule.topic))
    return Translated(escape(rule.topic), rule.access, rule.line, levels, note)


def _pattern(acl: AclFile, rule: AclLine) -> Optional[Translated]:
    if not _valid_filter(acl, rule):
        return None
    written = []
    for level in topics.split(rule.topic):
        if level in TEMPLATES:
            written.append(level)
        elif "%u" in level or "%c" in level:
            acl.at(rule.line, f"pattern {rule.topic!r}: Mosquitto substitutes inside the level {level!r}; "
                              "policyd only substitutes whole levels (e.g. dev/%u/#): cannot translate")
            return None
        else:
            written.append(escape(level))
    if not any(level in TEMPLATES for level in written):
        acl.at(rule.line, f"pattern {rule.topic!r} has no %u or %c: Mosquitto applies it to every client, "
                          "anonymous ones included; policyd has no such section: write it per user or "
                          "as a topic line instead")
        return None
    return Translated("/".join(written), rule.access, rule.line, topics.split(rule.topic))


def _valid_filter(acl: AclFile, rule: AclLine) -> bool:
    try:
        topics.validate_filter(rule.topic)
        return True
    except topics.TopicError as exc:
        acl.at(rule.line, f"invalid topic filter {rule.topic!r}: {exc} (Mosquitto loads it but never "
                          "matches it reliably): fix the acl_file")
        return False


def _conflicts(acl: AclFile, who: str, username: Optional[str], allows: list[Translated],
               pattern_denies: list[Translated]) -> None:
    """Error where Mosquitto's user-allow-before-pattern-deny order decides differently."""
    for deny in pattern_denies:
        levels = tuple(username if lv == "%u" else "+" if lv == "%c" else lv for lv in deny.levels)
        for allow in allows:
            if topics.overlaps(allow.levels, levels):
                acl.at(deny.line, f"pattern deny {deny.topic!r} and {who}'s `topic {allow.access} "
                                  f"{allow.topic}` (line {allow.line}) can match the same topic: Mosquitto "
                                  "allows it (a user's own rules are checked before patterns), policyd's "
                                  "deny wins. Cannot translate exactly: narrow one of the two lines")


def convert(acl: AclFile) -> Optional[str]:
    """The rules YAML for a parsed acl_file, or None when it cannot be translated (see problems)."""
    if not acl.ok:
        return None
    users: dict[str, list[Translated]] = {}
    for name in acl.users:
        why = identity_problem(name)
        if why:
            first = next((r.line for r in acl.lines if r.user == name), 0)
            acl.at(first, f"user {name!r}: {why}; policyd refuses such names")
        users[name] = []
    anonymous: list[Translated] = []
    patterns: list[Translated] = []
    for rule in acl.lines:
        if rule.kind == "pattern":
            translated = _pattern(acl, rule)
            if translated is not None:
                patterns.append(translated)
            continue
        translated = _literal(acl, rule)
        if translated is not None:
            (anonymous if rule.user is None else users[rule.user]).append(translated)

    pattern_denies = [p for p in patterns if p.access == "deny"]
    anon_patterns = [p for p in patterns if "%u" not in p.levels]  # Mosquitto skips %u for anonymous
    for name, rules in users.items():
        if identity_problem(name) is None:
            _conflicts(acl, f"user {name}", name, [r for r in rules if r.access != "deny"], pattern_denies)
    _conflicts(acl, "the anonymous section", None, [r for r in anonymous if r.access != "deny"],
               [p for p in anon_patterns if p.access == "deny"])
    if not acl.ok:
        return None
    copied = [Translated(p.topic, p.access, p.line, p.levels, "pattern applies to anonymous clients in Mosquitto")
              for p in anon_patterns]
    return _render(acl.file, users, patterns, anonymous + copied)


def _render(file: str, users: dict[str, list[Translated]], patterns: list[Translated],
            anonymous: list[Translated]) -> str:
    name = file.rsplit("/", 1)[-1]
    out = [f"# Imported from {name} by `policyd import-acl`: every decision is what Mosquitto's",
           "# acl_file decides, except the differences docs/rules.md lists for all policies.",
           "# `%%` is a literal `%`: a Mosquitto `topic` line never substitutes %u or %c."]
    if users:
        out.append("users:")
        for user, rules in users.items():
            out.append(f"  {_q(user)}:" + ("" if rules else " []"))
            out += [_rule_line("    ", r, name) for r in rules]
    else:
        out.append("users: {}")
    for section, rules in (("patterns", patterns), ("anonymous", anonymous)):
        if rules:
            out.append(f"{section}:")
            out += [_rule_line("  ", r, name) for r in rules]
    return "\n".join(out) + "\n"


def _rule_line(indent: str, rule: Translated, name: str) -> str:
    note = f"; {rule.note}" if rule.note else ""
    return f"{indent}- {{topic: {_q(rule.topic)}, access: {rule.access}}}  # {name}:{rule.line}{note}"


def _q(text: str) -> str:
    """A YAML double-quoted scalar (JSON string syntax is valid YAML)."""
    return json.dumps(text, ensure_ascii=False)


def import_acl(text: str, file: str = "<acl_file>") -> tuple[Optional[str], list[Problem]]:
    """Convert acl_file text; (YAML or None on errors, every problem found)."""
    acl = parse_acl(text, file)
    return convert(acl), acl.problems
