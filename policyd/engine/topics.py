"""MQTT topic names and filters, as lists of levels.

Pure functions, no I/O. Topics and filters are split once (at compile time
for rules, once per request for the checked topic) and compared level by
level, so matching never re-parses strings.
"""

from __future__ import annotations

from typing import Sequence

# MQTT 5 §1.5.4: a UTF-8 string is at most 65,535 bytes.
MAX_TOPIC_BYTES = 65535
SHARE_PREFIX = "$share/"


class TopicError(ValueError):
    """A topic name or filter that MQTT does not allow."""


def split(topic: str) -> tuple[str, ...]:
    return tuple(topic.split("/"))


def _check_common(text: str, what: str) -> None:
    if not text:
        raise TopicError(f"empty {what}")
    if "\x00" in text:
        raise TopicError(f"{what} contains NUL")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        raise TopicError(f"{what} longer than {MAX_TOPIC_BYTES} bytes")


def validate_name(topic: str) -> tuple[str, ...]:
    """Levels of a topic name (what is published); wildcards are not allowed."""
    _check_common(topic, "topic")
    if "+" in topic or "#" in topic:
        raise TopicError("topic name contains a wildcard (+ or #)")
    return split(topic)


def validate_filter(topic_filter: str) -> tuple[str, ...]:
    """Levels of a topic filter; '+' and '#' only as whole levels, '#' last."""
    _check_common(topic_filter, "topic filter")
    levels = split(topic_filter)
    for i, level in enumerate(levels):
        if level in ("+", "#"):
            if level == "#" and i != len(levels) - 1:
                raise TopicError("'#' must be the last level of a filter")
            continue
        if "+" in level or "#" in level:
            raise TopicError(f"wildcard inside level {level!r}: '+' and '#' must be a whole level")
    return levels


def strip_shared(topic_filter: str) -> str:
    """The filter of a `$share/<group>/<filter>` subscription, else unchanged."""
    if not topic_filter.startswith(SHARE_PREFIX):
        return topic_filter
    rest = topic_filter[len(SHARE_PREFIX):]
    group, sep, inner = rest.partition("/")
    if not group or not sep or not inner or "+" in group or "#" in group:
        raise TopicError("malformed $share subscription")
    return inner


def _dollar_guard(first_filter_level: str, first_topic_level: str) -> bool:
    """MQTT §4.7.2: a wildcard first level never matches a `$` topic."""
    return first_topic_level.startswith("$") and first_filter_level in ("+", "#")


def matches(flt: Sequence[str], topic: Sequence[str]) -> bool:
    """Does the filter `flt` match the topic name `topic` (both as levels)?"""
    if flt and topic and _dollar_guard(flt[0], topic[0]):
        return False
    for i, level in enumerate(flt):
        if level == "#":
            return True  # also matches the parent level: a/# matches a
        if i >= len(topic):
            return False
        if level != "+" and level != topic[i]:
            return False
    return len(topic) == len(flt)


def covers(outer: Sequence[str], inner: Sequence[str]) -> bool:
    """Is every topic that `inner` can match also matched by `outer`?

    Used at SUBSCRIBE: a subscription filter is granted when one rule covers it.
    Exact for a single rule; a filter covered only by a union of several rules
    is (conservatively) not covered.
    """
    if outer and inner and inner[0].startswith("$") and outer[0] in ("+", "#"):
        return False
    for i, level in enumerate(outer):
        if level == "#":
            return True
        if i >= len(inner):
            return False
        sub = inner[i]
        if sub == "#":
            return False  # inner reaches deeper (and the parent) than outer does
        if level == "+":
            continue
        if sub == "+" or sub != level:
            return False
    return len(inner) == len(outer)


def overlaps(a: Sequence[str], b: Sequence[str]) -> bool:
    """Can some topic be matched by both filters?"""
    if a and b and (_dollar_guard(a[0], b[0]) or _dollar_guard(b[0], a[0])):
        return False
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else None
        y = b[i] if i < len(b) else None
        if x == "#" or y == "#":
            return True
        if x is None or y is None:
            return False
        if x != "+" and y != "+" and x != y:
            return False
    return True
