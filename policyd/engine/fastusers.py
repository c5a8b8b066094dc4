"""The `users:` section of a rules file, read without building a YAML node tree.

A 100,000-identity file is almost all `users:` section, and composing it with
libyaml costs more than a second (one node and one mark object per scalar)
before validation starts. Such sections are written in one regular form:

    users:
      Device1:                     # a comment is fine
        - topic: /device/%u/#
          access: readwrite
        - {topic: fleet/Device1/config, access: read}

This module reads exactly that form line by line and builds the same
`RuleSpec`s, with the same positions, that the YAML path would (a hypothesis
test compares the two on generated files). It is an accelerator, never a
second opinion: whatever it does not recognise, or recognises but finds wrong,
makes it return a `Miss`, and the loader reads the whole file the general way,
which reports every problem. So the fast form only takes files that are valid.

The rest of the file goes to libyaml with the users section blanked out
(lines kept, so every mark stays right); `rest_is_separate` checks that no
scalar or flow collection of the rest reached into the blanked lines.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import NamedTuple

import yaml

from . import topics
from .fastyaml import NULL_WORDS
from .model import ACCESS_WORDS, RuleSpec, SourceRef, identity_problem
from .templates import NEEDS_FILTER_CHECK, rule_filter_problem

# An identity: ASCII, no `+ # /` or NUL (so always safe as a topic level), not
# starting with a YAML indicator. Anything else is read the general way.
_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.@=-]*"
# A plain scalar value (topic or access word): no space, quote, `:`, `,` or
# brackets, and not starting with `#`, `%` or `-`.
_VALUE = r"[A-Za-z0-9_./$+][A-Za-z0-9_./$+#%-]*"
# Quoted scalars on one line, printable ASCII, without escapes ('' or backslash): a
# topic such as '#' must be quoted in YAML, so these are common in real files.
_QUOTED = r"'[ -&(-~]*'" + "|" + r'"[ !\#-\[\]-~]*"'
_SCALAR = rf"(?:{_VALUE}|{_QUOTED})"
# Comment text: what YAML accepts as printable, minus tab and every line break.
_COMMENT = r"\#[ -~\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]*"
_KEY = r"topic|access"

# One line of the section, newline included, or the two lines of a block rule.
# Groups: indent; a name; or a dash and either a block rule (first key and
# value, the next line's indent, second key and value) or a flow rule.
_LINE = re.compile(rf"""
    (?P<indent>\ +)   # content is indented: a line in column 0 ends the section
    (?:
        (?P<name>{_NAME}|{_QUOTED}):
      | (?P<dash>-\ +)(?:
            (?P<k1>{_KEY}):\ +(?P<v1>{_SCALAR})(?:\ +{_COMMENT})?\ *\n
            (?P<indent2>\ +)(?P<k2>{_KEY}):\ +(?P<v2>{_SCALAR})
          | \{{\ *(?P<fk1>{_KEY}):\ +(?P<fv1>{_SCALAR})\ *,\ *(?P<fk2>{_KEY}):\ +(?P<fv2>{_SCALAR})\ *\}}
        )
    )
    (?:\ +{_COMMENT})?\ *\n
  | \ *(?:{_COMMENT})?\n
""", re.VERBOSE)

# The section's own line.
_SECTION = re.compile(rf"^users:(?:\ +{_COMMENT})?\ *\n", re.MULTILINE | re.VERBOSE)
# Line breaks YAML knows besides \n, and the byte order mark (YAML skips it).
_NOT_NEWLINE_BREAKS = "\r\x85\u2028\u2029\ufeff"  # each looked for with `in` (memchr): 12 MB in ~1 ms
_NEXT_KEY_START = re.compile(r"[A-Za-z0-9_\"']")
_QUOTES = frozenset("'\"")  # plain words in NULL_WORDS are null; quoted they are text
_ACCESS_WORDS = frozenset(ACCESS_WORDS)


class Miss(NamedTuple):
    """Why the fast form does not apply (1-based line; 0: the file as a whole)."""

    line: int
    why: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.why}" if self.line else self.why


@dataclass(frozen=True)
class UsersSection:
    users: dict[str, tuple[RuleSpec, ...]]
    sources: dict[str, str]   # each identity's block as written: equal text, equal rules
    rest: str                 # the file with the section's lines blanked
    first_line: int           # 0-based line of `users:`, as YAML marks count lines
    end_line: int             # 0-based line after the section


def read_users_section(text: str, file: str) -> UsersSection | Miss:
    """The users section in the regular form, or why not."""
    if any(char in text for char in _NOT_NEWLINE_BREAKS):
        # YAML also breaks lines at these: a `users:` line of ours could sit inside one of
        # its quoted scalars, and its line numbers would not be ours.
        return Miss(0, "a line break other than \\n (\\r, \\x85, \\u2028, \\u2029) or a byte order mark")
    found = _SECTION.search(text)
    if found is None:
        return Miss(0, "no `users:` line of the plain form")
    if text.count("\nusers:") + text.count("\nusers ") + text.startswith(("users:", "users ")) != 1:
        return Miss(0, "more than one line starts with `users`")
    if text.startswith("...") or "\n..." in text:
        return Miss(0, "a `...` document end marker")
    start = found.start()
    if not text.endswith("\n"):
        text += "\n"
    first_line = text.count("\n", 0, start)
    body = _read_body(text, found.end(), first_line + 2, file)
    if isinstance(body, Miss):
        return body
    users, sources, end = body
    blank = "\n" * text.count("\n", start, end)
    return UsersSection(users, sources, text[:start] + blank + text[end:],
                        first_line, first_line + len(blank))


def _read_body(text: str, pos: int, line_no: int, file: str) -> tuple[dict, dict, int] | Miss:
    """Read lines from `pos` up to the first one that starts in column 0 with
    anything but a comment: (users, their sources, where the section ends)."""
    users: dict[str, tuple[RuleSpec, ...]] = {}
    sources: dict[str, str] = {}
    name = key = None           # the identity whose rules are being read, and its keys' prefix
    rules: list[RuleSpec] = []
    name_indent = dash_indent = None  # as text: compared once per line, measured once
    block_start = names = 0
    new = tuple.__new__
    for m in _LINE.finditer(text, pos):
        if m.start() != pos:
            break
        pos = m.end()
        indent, new_name, dash, k1, v1, indent2, k2, v2, fk1, fv1, fk2, fv2 = m.groups()
        if new_name is not None:
            if name_indent is None:
                name_indent = indent
            elif indent != name_indent:
                return Miss(line_no, "identities at different indentations")
            if new_name[0] in _QUOTES:
                new_name = new_name[1:-1]
                if identity_problem(new_name):
                    return Miss(line_no, "an identity the general reader must judge")
            elif new_name in NULL_WORDS:
                return Miss(line_no, f"identity {new_name!r} is a YAML null")
            if name is not None:
                users[name] = tuple(rules)
                sources[name] = text[block_start:m.start()]
            name, rules, dash_indent, block_start = new_name, [], None, m.start()
            names += 1
            key = f"users.{name}["
        elif dash is not None:
            if name is None:
                return Miss(line_no, "a rule outside an identity")
            if dash_indent is None:
                if len(indent) < len(name_indent):
                    return Miss(line_no, "a rule left of its identity")
                dash_indent = indent
            elif indent != dash_indent:
                return Miss(line_no, "rules at different indentations")
            column = len(indent) + len(dash) + 1  # of its first key (block) or `{` (flow), 1-based
            if k1 is None:
                k1, v1, k2, v2 = fk1, fv1, fk2, fv2
            elif len(indent2) + 1 != column:
                return Miss(line_no + 1, "a key that does not continue its rule")
            if k1 == "topic" and k2 == "access":
                topic, access = v1, v2
            elif k1 == "access" and k2 == "topic":
                topic, access = v2, v1
            else:
                return Miss(line_no, "a rule without both topic and access")
            if topic[0] in _QUOTES:
                topic = topic[1:-1]
            elif topic in NULL_WORDS:
                topic = ""
            if access[0] in _QUOTES:
                access = access[1:-1]
            if access not in _ACCESS_WORDS or not topic or len(topic) > topics.MAX_TOPIC_BYTES or not (
                    NEEDS_FILTER_CHECK.isdisjoint(topic) or _filter_ok(topic)):
                return Miss(line_no, "a rule the general reader must judge")
            # tuple.__new__: the named tuples' own __new__ is Python code, this is 100,000s of calls
            rules.append(new(RuleSpec, (topic, access, new(SourceRef, (file, line_no, column, f"{key}{len(rules)}]")))))
            if indent2 is not None:
                line_no += 1
        line_no += 1
    if pos < len(text) and text[pos] in " #\n":
        return Miss(line_no, "not in the fast form (escapes in quotes, flow lists, tabs, non-ASCII...)")
    if pos < len(text) and not _NEXT_KEY_START.match(text, pos):
        # `- x` or `: x` in column 0 would attach to the key before `users:` once it is blanked
        return Miss(line_no, "the line after the section does not start a key")
    if name is None:
        return Miss(line_no, "no identity")
    users[name] = tuple(rules)
    sources[name] = text[block_start:pos]
    if len(users) != names:
        return Miss(0, "an identity listed twice")
    return users, sources, pos


@functools.lru_cache(maxsize=4096)  # templated and wildcard topics repeat across identities
def _filter_ok(topic: str) -> bool:
    return rule_filter_problem(topic) is None


def rest_is_separate(root: yaml.Node | None, section: UsersSection) -> bool:
    """True when nothing of the rest spans the blanked lines (a quoted or flow
    value that ran across `users:` would have changed meaning)."""
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        # Nothing starts on a blank line, so a node reaches into the section
        # exactly when it starts before it and ends after the section's first column.
        if (isinstance(node, yaml.ScalarNode) or node.flow_style) and node.start_mark.line < section.first_line \
                and (node.end_mark.line, node.end_mark.column) > (section.first_line, 0):
            return False
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.append(key)
                stack.append(value)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return True
