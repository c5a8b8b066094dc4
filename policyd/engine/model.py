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

# A rules file's `order:`: every deny wins (the default), or Mosquitto 2.0's acl_file
# order, where a client's own rules decide before the patterns (engine/policy.py).
DENY_FIRST = "deny-first"
MOSQUITTO = "mosquitto"
ORDERS = (DENY_FIRST, MOSQUITTO)


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
# Longest identity (UTF-8 bytes): far above any real device name, and a cap on
# what one client can make the daemon substitute into every rule.
MAX_IDENTITY_BYTES = 256


def identity_problem(name: str) -> str | None:
    """Why `name` can never be a safe identity (username or client id as it is
    substituted for %u / %c, a rules-file name, a certificate's identity), or None.

    The one definition of a safe identity: the rules loader, the engine's
    template substitution, certificate mapping, `certs` and password entries
    all ask here. Refused: empty; `+ # /` or NUL (a wildcard or another topic
    level); a leading `$` (`%u/#` would become `$SYS/#` or `$CONTROL/#`, the
    broker's own topics); control characters; more than MAX_IDENTITY_BYTES.
    Invalid UTF-8 never reaches here: callers treat undecodable bytes as unsafe.
    """
    if not name:
        return "empty identity"
    if name[0] != "$" and UNSAFE_IDENTITY_CHARS.isdisjoint(name) and name.isprintable() \
            and len(name) <= MAX_IDENTITY_BYTES // 4:
        return None  # the common case, decided without encoding
    bad = sorted(set(name) & UNSAFE_IDENTITY_CHARS)
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        return f"identity {_shown(name)} contains {shown}, which can never be a safe topic level"
    if name[0] == "$":
        return f"identity {_shown(name)} starts with '$', the prefix of the broker's own topics ($SYS, $CONTROL)"
    if not name.isprintable():
        return f"identity {_shown(name)} contains control characters (or other non-printable ones)"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_IDENTITY_BYTES:
        return f"identity longer than {MAX_IDENTITY_BYTES} bytes"
    return None


def _shown(name: str) -> str:
    return repr(name[:64])


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
    # `certificates:` section. Empty: no certificate is known for the client.
    attributes: Mapping[str, tuple[str, ...]] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str                      # short machine-friendly reason, e.g. "rule", "default-deny"
    rule: Optional["RuleLike"] = None
    trace: tuple["TraceStep", ...] = field(default=(), compare=False)
    # The client should not be connected at all (its client id is not one its
    # identity may use): the broker disconnects it, not only refuses this check.
    ends_session: bool = False

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
