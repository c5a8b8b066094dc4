"""`%u` / `%c` templates inside rule topics, and the `%%` escape.

A topic level that is exactly `%u` or `%c` is a template, replaced per client
by its username or client id. `%%` is a literal `%` (so `%%u` is the literal
level `%u`, which a Mosquitto `topic` line means). Any other `%` is literal.
A template that is only part of a level (`foo%u`) is refused: substitution
must never splice levels together.
"""

from __future__ import annotations

import functools

from . import topics

TEMPLATES = ("%u", "%c")


class TemplateError(ValueError):
    """A template that does not fill a whole topic level."""


def literal_level(level: str) -> str:
    """The level's text with `%%` unescaped; raises TemplateError on a partial template."""
    if "%" not in level:
        return level
    out = []
    i = 0
    while i < len(level):
        ch = level[i]
        nxt = level[i + 1] if i + 1 < len(level) else ""
        if ch == "%" and nxt == "%":
            out.append("%")
            i += 2
            continue
        if ch == "%" and nxt in ("u", "c"):
            raise TemplateError(f"template in {level!r} must fill a whole topic level (e.g. /device/%u/#; "
                                "write %% for a literal %)")
        out.append(ch)
        i += 1
    return "".join(out)


def compile_topic(topic: str) -> tuple[tuple[str, ...], tuple[tuple[int, str], ...]]:
    """(levels with escapes resolved, (index, template) slots); raises TemplateError."""
    levels = tuple(topic.split("/"))
    if "%" not in topic:  # the common case, 100,000 times in a large file
        return levels, ()
    return _compile_templated(levels)


@functools.lru_cache(maxsize=4096)  # templated topics repeat (patterns, groups)
def _compile_templated(levels: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[tuple[int, str], ...]]:
    return compile_levels(levels)


def compile_levels(levels: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[tuple[int, str], ...]]:
    """(levels with escapes resolved, (index, template) slots); raises TemplateError."""
    out = list(levels)
    slots = []
    for i, level in enumerate(levels):
        if level in TEMPLATES:
            slots.append((i, level))
        else:
            out[i] = literal_level(level)
    return tuple(out), tuple(slots)


# A rule topic without these characters is a valid filter with no template, whatever
# else it holds (up to the length limit): readers skip rule_filter_problem for it.
NEEDS_FILTER_CHECK = frozenset("+#%\x00")


def rule_filter_problem(topic: str) -> str | None:
    """Why `topic` cannot be a rule's filter (MQTT filter syntax, whole-level
    templates), or None. The loader reports it; the fast users reader only asks."""
    try:
        topics.validate_filter(topic)
    except topics.TopicError as exc:
        return f"invalid topic filter {topic!r}: {exc}"
    try:
        compile_topic(topic)
    except TemplateError as exc:
        return str(exc)
    return None


def escape(text: str) -> str:
    """Text written so that every `%` stays literal (used by import-acl)."""
    return text.replace("%", "%%")
