"""Mosquitto `acl_file` → policyd rules YAML, keeping every decision Mosquitto makes.

Read the way Mosquitto 2.0 reads it (src/security_default.c): a line starting
with `#` is a comment; fields are separated by spaces; `topic [ACCESS] TOPIC`
and `pattern [ACCESS] TOPIC` (no access word = readwrite); `user NAME` starts a
user's block (blocks of one name are merged); `topic` lines before the first
`user` line are the anonymous clients' rules. Anything Mosquitto refuses to
start with is an error here too.

Translation, and why it is exact. The output says `order: mosquitto`, the
engine's copy of Mosquitto's order (engine/policy.py): a client's own rules
(its user block, or the anonymous section), denies first, then the patterns,
denies first; a pattern with %u skipped for anonymous clients; patterns denied
to a username or client id holding `+`/`#`; SUBSCRIBE granted, each message
checked at delivery. Then:
  * `topic` lines are literal in Mosquitto (`%u` there is the text "%u"): they
    are written with every `%` escaped as `%%`, and a `%u`/`%c` gets a warning.
  * `pattern` lines go to `patterns:` as they are (one without %u/%c too).
  * `--order deny-first` writes policyd's default order instead, where any deny
    wins and SUBSCRIBE filters are checked; where that would decide a publish or
    delivery differently (a user allow meeting a pattern deny) it is an error.
What policyd cannot express is an error, never a guess: templates inside a
level (`dev%u`), filters MQTT does not allow. A user block for a name policyd
never gives rules to (`/`, `+`, `#`, NUL) is left out with a warning: that
client is denied what the block allowed. Remaining differences (hostile
identities) are the ones docs/rules.md lists for every policy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

from . import topics
from .loader import identity_problem
from .model import MOSQUITTO, Problem, SourceRef
from .fastyaml import no_gc
from .templates import NEEDS_FILTER_CHECK, TEMPLATES, escape

ACCESS = ("read", "write", "readwrite", "deny")  # the words Mosquitto accepts
_WHITESPACE = " \t\n\r\v\f"


class AclLine(NamedTuple):  # a tuple: 100,000-user files have hundreds of thousands
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
    users: dict[str, int] = field(default_factory=dict)  # name -> line of its first block, in file order
    problems: list[Problem] = field(default_factory=list)

    def at(self, line: int, message: str, severity: str = "error", key: str = "") -> None:
        self.problems.append(Problem(SourceRef(self.file, line, 1, key), message, severity))

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)


def parse_acl(text: str, file: str = "<acl_file>", progress=None) -> AclFile:
    """Parse acl_file text as Mosquitto 2.0 does, collecting every problem.
    `progress(done, total)`, if given, is called every 100,000 lines."""
    with no_gc():  # hundreds of thousands of small tuples, no cycles: see fastyaml
        return _parse_acl(text, file, progress)


def _parse_acl(text: str, file: str, progress) -> AclFile:
    acl = AclFile(file)
    user: Optional[str] = None
    append = acl.lines.append
    raw_lines = text.split("\n")
    for number, raw in enumerate(raw_lines, start=1):
        if progress is not None and not number % 100_000:
            progress(number, len(raw_lines))
        line = raw.rstrip(_WHITESPACE)
        if not line or line[0] == "#":
            continue
        head, _, rest = (line if line[0] != " " else line.lstrip(" ")).partition(" ")
        if head == "topic" or head == "pattern":
            # `topic [ACCESS] TOPIC`: one field alone is a readwrite topic
            access, sep, topic = rest.lstrip(" ").partition(" ")
            if sep:
                topic = topic.strip(_WHITESPACE)
            if not topic:
                access, topic = "readwrite", access
            if not topic:
                acl.at(number, f"`{head}` without a topic (Mosquitto refuses this file)")
            elif access not in ACCESS:
                acl.at(number, f"invalid access {access!r} (read, write, readwrite, deny; "
                               "Mosquitto refuses this file)")
            else:
                append(AclLine(head, access, topic, user, number))
        elif head == "user":
            name = rest.strip(_WHITESPACE)
            if not name:
                acl.at(number, "`user` without a name (Mosquitto refuses this file)")
                continue
            user = name
            acl.users.setdefault(name, number)
        elif head:
            acl.at(number, f"invalid line starting {head[:40]!r}: expected topic, pattern or user "
                           "separated by spaces (Mosquitto refuses this file)")
    return acl


# --- translation -----------------------------------------------------------


class Translated(NamedTuple):
    """A rule as it will be written: escaped topic, access, origin line."""

    topic: str
    access: str
    line: int
    source: str              # the topic as the acl_file has it
    kind: str                # "topic" | "pattern"
    note: str = ""

    @property
    def levels(self) -> tuple[str, ...]:
        """For conflict checks: literal levels; in a pattern, templates as "%u"/"%c" tokens
        (in a topic line they are literal text, which no template token equals)."""
        if self.kind == "pattern":
            return topics.split(self.source)
        return tuple("\x00" + lv if lv in TEMPLATES else lv for lv in topics.split(self.source))


def _literal(acl: AclFile, rule: AclLine) -> Optional[Translated]:
    topic = rule.topic
    if NEEDS_FILTER_CHECK.isdisjoint(topic) and len(topic) < 16_000:
        return Translated(topic, rule.access, rule.line, topic, "topic")  # the usual case: nothing to check
    if not _valid_filter(acl, rule):
        return None
    note = ""
    if any(t in topic for t in TEMPLATES):
        note = "%u/%c literal as in Mosquitto"
        acl.at(rule.line, f"{topic!r}: %u and %c are not substituted in a Mosquitto `topic` line; kept "
                          f"literal (written {escape(topic)!r}). Use a `pattern` line if substitution "
                          "was meant", "warning")
    return Translated(escape(topic), rule.access, rule.line, topic, "topic", note)


def _pattern(acl: AclFile, rule: AclLine, order: str) -> Optional[Translated]:
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
        if order != MOSQUITTO:
            acl.at(rule.line, f"pattern {rule.topic!r} has no %u or %c: Mosquitto applies it to every client; "
                              "policyd's default order has no such section (import without --order)")
            return None
        acl.at(rule.line, f"pattern {rule.topic!r} has no %u or %c: it applies to every client, as in "
                          "Mosquitto", "warning")
    return Translated("/".join(written), rule.access, rule.line, rule.topic, "pattern")


def _valid_filter(acl: AclFile, rule: AclLine) -> bool:
    try:
        topics.validate_filter(rule.topic)
        return True
    except topics.TopicError as exc:
        acl.at(rule.line, f"invalid topic filter {rule.topic!r}: {exc} (Mosquitto refuses this file)")
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


def convert(acl: AclFile, order: str = MOSQUITTO) -> Optional[str]:
    """The rules YAML for a parsed acl_file, or None when it cannot be translated (see problems)."""
    with no_gc():
        return _convert(acl, order)


def _convert(acl: AclFile, order: str) -> Optional[str]:
    if not acl.ok:
        return None
    users: dict[str, list] = {}  # Translated, or the line as written
    left_out: dict[str, int] = {}
    for name, line in acl.users.items():
        why = identity_problem(name)
        if why:
            left_out[name] = line
        users[name] = []
    anonymous: list[Translated] = []
    patterns: list[Translated] = []
    source = acl.file.rsplit("/", 1)[-1]
    fast = order == MOSQUITTO
    for rule in acl.lines:
        if fast and rule.user is not None and rule.kind == "topic" and _simple_topic(rule.topic):
            # the usual line of a large file, written at once (a valid filter, nothing to escape)
            users[rule.user].append(f'- {{topic: "{rule.topic}", access: {rule.access}}}  # {source}:{rule.line}')
            continue
        if rule.kind == "pattern":
            translated = _pattern(acl, rule, order)
            if translated is not None:
                patterns.append(translated)
            continue
        translated = _literal(acl, rule)
        if translated is not None:
            (anonymous if rule.user is None else users[rule.user]).append(translated)
    for name, line in left_out.items():
        acl.at(line, f"user {name!r}: {identity_problem(name)}; policyd gives such a name no rules of its own, "
                     f"so its {len(users.pop(name))} rule(s) are left out (that client is denied what they "
                     "allowed)", "warning")
    if order == MOSQUITTO:
        return _render(acl.file, users, patterns, anonymous, order) if acl.ok else None

    pattern_denies = [p for p in patterns if p.access == "deny"]
    anon_patterns = [p for p in patterns if "%u" not in p.levels]  # Mosquitto skips %u for anonymous
    for name, rules in users.items():
        _conflicts(acl, f"user {name}", name, [r for r in rules if r.access != "deny"], pattern_denies)
    _conflicts(acl, "the anonymous section", None, [r for r in anonymous if r.access != "deny"],
               [p for p in anon_patterns if p.access == "deny"])
    if not acl.ok:
        return None
    copied = [p._replace(note="pattern applies to anonymous clients in Mosquitto") for p in anon_patterns]
    return _render(acl.file, users, patterns, anonymous + copied, order)


def _render(file: str, users: dict[str, list], patterns: list[Translated],
            anonymous: list[Translated], order: str) -> str:
    name = file.rsplit("/", 1)[-1]
    out = [f"# Imported from {name} by `policyd import-acl`: every decision is what Mosquitto's",
           "# acl_file decides, except the differences docs/rules.md lists for all policies.",
           "# `%%` is a literal `%`: a Mosquitto `topic` line never substitutes %u or %c."]
    if order == MOSQUITTO:
        out += ["# order mosquitto: a client's own rules decide before the patterns, as in Mosquitto.",
                "order: mosquitto"]
    if users:
        out.append("users:")
        for user, rules in users.items():
            out.append(f"  {_q(user)}:" + ("" if rules else " []"))
            out += ["    " + r if type(r) is str else _rule_line("    ", r, name) for r in rules]
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


_NOT_SIMPLE = frozenset('+%"\\')


def _simple_topic(topic: str) -> bool:
    """A filter in printable ASCII with no `+`, `%`, `"`, `\\` and `#` only as the last level:
    valid (the length limit is checked in bytes by validate_filter otherwise), nothing to escape."""
    return (len(topic) < 16_000 and topic.isascii() and topic.isprintable() and _NOT_SIMPLE.isdisjoint(topic)
            and ("#" not in topic or topic.find("#") == len(topic) - 1 and (len(topic) == 1 or topic[-2] == "/")))


def _q(text: str) -> str:
    """A YAML double-quoted scalar (JSON string syntax is valid YAML)."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return json.dumps(text, ensure_ascii=False)


def import_acl(text: str, file: str = "<acl_file>", order: str = MOSQUITTO,
               progress=None) -> tuple[Optional[str], list[Problem]]:
    """Convert acl_file text; (YAML or None on errors, every problem found).
    `progress(lines_read, lines)` is called every 100,000 lines when given."""
    acl = parse_acl(text, file, progress)
    return convert(acl, order), acl.problems
