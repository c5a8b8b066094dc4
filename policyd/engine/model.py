"""The vocabulary of the rule engine: accesses, rules, requests, decisions."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Mapping, NamedTuple, Optional

from .templates import TEMPLATES


class Access(enum.IntEnum):
    """What a client is doing; values are Mosquitto's MOSQ_ACL_* bits."""

    READ = 1         # a message is about to be delivered to the client
    WRITE = 2        # the client publishes
    SUBSCRIBE = 4    # the client subscribes with a topic filter
    UNSUBSCRIBE = 8  # the client unsubscribes

    @classmethod
    def parse(cls, word: str) -> "Access":
        try:
            return cls[word.upper()]
        except KeyError:
            raise ValueError(f"unknown access {word!r} (read, write, subscribe, unsubscribe)") from None


# What a rule's `access:` word grants, as Access bits. SUBSCRIBE is granted by
# `read` (a subscription only makes sense if its messages may be delivered).
GRANTS = {
    "read": frozenset({Access.READ, Access.SUBSCRIBE}),
    "write": frozenset({Access.WRITE}),
    "readwrite": frozenset({Access.READ, Access.SUBSCRIBE, Access.WRITE}),
    "deny": frozenset(),
}
ACCESS_WORDS = tuple(GRANTS)


class SourceRef(NamedTuple):  # a tuple: 100,000-rule files make hundreds of thousands
    """Where something was written: file, 1-based line and column, dotted key."""

    file: str
    line: int
    column: int
    key: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} {self.key}"


# Characters that make an identity unusable as one topic level.
UNSAFE_IDENTITY_CHARS = frozenset("+#/\x00")


def identity_problem(name: str) -> str | None:
    """Why `name` cannot be an identity in a rules file, or None."""
    if not name:
        return "empty identity"
    if UNSAFE_IDENTITY_CHARS.isdisjoint(name):
        return None
    bad = sorted(set(name) & UNSAFE_IDENTITY_CHARS)
    shown = ", ".join(repr(c) for c in bad)
    return f"identity {name!r} contains {shown}, which can never be a safe topic level"


class RuleSpec(NamedTuple):  # a tuple: cheapest to build, 100,000s of times per large file
    """One rule as written: its topic filter, its access word and where it stands."""

    topic: str
    access: str  # one of ACCESS_WORDS
    ref: SourceRef

    @property
    def templates(self) -> frozenset[str]:
        """Which of %u / %c stand as a level of this rule's topic."""
        return frozenset(level for level in self.topic.split("/") if level in TEMPLATES)


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or suspicious) in a rules file."""

    ref: SourceRef
    message: str
    severity: str = "error"  # "error" or "warning"

    def __str__(self) -> str:
        r = self.ref
        where = f"{r.file}:{r.line}:{r.column}" if r.line else r.file
        key = f" {r.key}:" if r.key else ""
        return f"{where}: {self.severity}:{key} {self.message}"


@dataclass(frozen=True)
class Request:
    """One question: may this client do `access` on `topic`?

    `username` is None for a client that connected without one. Identities are
    taken as the broker saw them (bytes allowed): the engine, not the caller,
    decides whether they are safe to substitute into templates.
    """

    username: Optional[str | bytes]
    clientid: str | bytes
    topic: str | bytes
    access: Access
    # Certificate subject attributes, e.g. {"OU": ("sensors",)}: matched by the
    # `certificates:` section. Empty until the broker side sends them.
    attributes: Mapping[str, tuple[str, ...]] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str                      # short machine-friendly reason, e.g. "rule", "default-deny"
    rule: Optional["RuleLike"] = None
    trace: tuple["TraceStep", ...] = field(default=(), compare=False)

    @property
    def word(self) -> str:
        return "allow" if self.allowed else "deny"

    def describe(self) -> str:
        if self.rule is not None:
            return f"{self.word}: {self.reason} {self.rule}"
        return f"{self.word}: {self.reason}"


@dataclass(frozen=True)
class TraceStep:
    """One rule considered while explaining a decision, and what it did."""

    rule: "RuleLike"
    outcome: str  # "allow", "deny", "no-match", "skipped"
    why: str

    def __str__(self) -> str:
        return f"{self.outcome:8} {self.rule}  ({self.why})"


class RuleLike:  # pragma: no cover - typing helper only
    """Anything with a readable __str__ naming a rule and where it was written."""
