"""The compiled, immutable policy and its decision procedure.

Decision order (docs/rules.md has the full reference and the reasons):
  1. UNSUBSCRIBE is always allowed (as in Mosquitto: it can only reduce access).
  2. A topic that is not valid MQTT is denied.
  3. A superuser is allowed everything.
  4. Rules that can apply: the `anonymous` rules for a client without a
     username; otherwise the user's own rules, its groups' rules, then the
     patterns. Looked up by username in a dict: the cost of a check depends
     on the rules of one identity, never on how many identities there are.
  5. Any matching deny rule denies (deny wins across all rule sets).
  6. The first allow rule that matches and grants the access allows.
  7. Otherwise: deny.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from . import topics
from .loader import PolicySpec, RuleSpec, identity_problem
from .model import GRANTS, Access, Decision, Request, TraceStep


@dataclass(frozen=True)
class Identity:
    """A client's identity as usable in templates: text, or None if unsafe."""

    username: Optional[str]     # None: anonymous, or not valid UTF-8
    anonymous: bool
    username_safe: bool
    clientid: Optional[str]
    clientid_safe: bool

    @classmethod
    def of(cls, username: Optional[str | bytes], clientid: str | bytes) -> "Identity":
        user = _text(username) if username is not None else None
        cid = _text(clientid)
        return cls(
            username=user,
            anonymous=username is None,
            username_safe=user is not None and identity_problem(user) is None,
            clientid=cid,
            clientid_safe=cid is not None and identity_problem(cid) is None,
        )

    def value(self, template: str) -> Optional[str]:
        """The safe substitution for %u / %c, or None when there is none."""
        if template == "%u":
            return self.username if self.username_safe else None
        return self.clientid if self.clientid_safe else None


def _text(value: str | bytes) -> Optional[str]:
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True, slots=True)
class CompiledRule:
    topic: str
    levels: tuple[str, ...]
    slots: tuple[tuple[int, str], ...]  # (level index, "%u"|"%c") to substitute
    access: str
    grants: frozenset[Access]
    source: RuleSpec = field(compare=False)

    @property
    def deny(self) -> bool:
        return self.access == "deny"

    def expand(self, ident: Identity) -> Optional[tuple[str, ...]]:
        """The rule's filter for this identity; None if a template has no safe value."""
        if not self.slots:
            return self.levels
        levels = list(self.levels)
        for index, template in self.slots:
            value = ident.value(template)
            if value is None:
                return None
            levels[index] = value
        return tuple(levels)

    def __str__(self) -> str:
        return f"{self.source.ref} ({self.access} {self.topic})"


def compile_rule(spec: RuleSpec) -> CompiledRule:
    levels = topics.split(spec.topic)
    slots = tuple((i, lv) for i, lv in enumerate(levels) if lv in ("%u", "%c"))
    return CompiledRule(spec.topic, levels, slots, spec.access, GRANTS[spec.access], spec)


@dataclass(frozen=True)
class RuleSet:
    """Rules that apply together, denies kept apart so they are checked first."""

    denies: tuple[CompiledRule, ...] = ()
    allows: tuple[CompiledRule, ...] = ()

    @classmethod
    def of(cls, specs: tuple[RuleSpec, ...]) -> "RuleSet":
        rules = [compile_rule(s) for s in specs]
        return cls(tuple(r for r in rules if r.deny), tuple(r for r in rules if not r.deny))

    def __len__(self) -> int:
        return len(self.denies) + len(self.allows)


EMPTY = RuleSet()


@dataclass(frozen=True)
class CompiledPolicy:
    source_file: str
    source_sha256: str
    superusers: frozenset[str]
    users: dict[str, RuleSet]   # per identity: own rules + its groups' rules
    patterns: RuleSet
    anonymous: RuleSet
    generation: int = 0
    rule_count: int = 0

    @property
    def identity_count(self) -> int:
        return len(self.users) + len(self.superusers - self.users.keys())

    def with_generation(self, generation: int) -> "CompiledPolicy":
        return dataclasses.replace(self, generation=generation)

    def decide(self, request: Request) -> Decision:
        return _evaluate(self, request, None)

    def explain(self, request: Request) -> Decision:
        trace: list[TraceStep] = []
        decision = _evaluate(self, request, trace)
        return dataclasses.replace(decision, trace=tuple(trace))


def compile_policy(spec: PolicySpec) -> CompiledPolicy:
    per_user: dict[str, list[RuleSpec]] = {name: list(rules) for name, rules in spec.users.items()}
    for group in spec.groups:
        for member in group.members:
            per_user.setdefault(member, []).extend(group.rules)
    users = {name: RuleSet.of(tuple(rules)) for name, rules in per_user.items()}
    rule_count = (sum(len(r) for r in spec.users.values()) + sum(len(g.rules) for g in spec.groups)
                  + len(spec.patterns) + len(spec.anonymous))
    return CompiledPolicy(
        source_file=spec.file,
        source_sha256=spec.sha256,
        superusers=frozenset(spec.superusers),
        users=users,
        patterns=RuleSet.of(spec.patterns),
        anonymous=RuleSet.of(spec.anonymous),
        rule_count=rule_count,
    )


def _subject(access: Access, topic: str) -> tuple[str, ...]:
    """Levels of the checked topic; raises TopicError when MQTT forbids it."""
    if access is Access.SUBSCRIBE:
        return topics.validate_filter(topics.strip_shared(topic))
    return topics.validate_name(topic)


def _evaluate(policy: CompiledPolicy, request: Request, trace: Optional[list[TraceStep]]) -> Decision:
    access = Access(request.access)
    if access is Access.UNSUBSCRIBE:
        return Decision(True, "unsubscribe-always-allowed")
    topic = _text(request.topic)
    if topic is None:
        return Decision(False, "invalid-topic: not valid UTF-8")
    try:
        subject = _subject(access, topic)
    except topics.TopicError as exc:
        return Decision(False, f"invalid-topic: {exc}")
    ident = Identity.of(request.username, request.clientid)
    if ident.username_safe and ident.username in policy.superusers:
        return Decision(True, "superuser")

    if ident.anonymous:
        rule_sets = (policy.anonymous,)
    else:
        own = policy.users.get(ident.username, EMPTY) if ident.username_safe else EMPTY
        rule_sets = (own, policy.patterns)

    for rules in rule_sets:
        for rule in rules.denies:
            verdict = _deny_verdict(rule, ident, access, subject)
            if trace is not None:
                trace.append(TraceStep(rule, verdict[0], verdict[1]))
            if verdict[0] == "deny":
                return Decision(False, "deny-rule", rule)

    for rules in rule_sets:
        for rule in rules.allows:
            verdict = _allow_verdict(rule, ident, access, subject)
            if trace is not None:
                trace.append(TraceStep(rule, verdict[0], verdict[1]))
            if verdict[0] == "allow":
                return Decision(True, "rule", rule)

    return Decision(False, "default-deny: no rule grants this")


def _deny_verdict(rule: CompiledRule, ident: Identity, access: Access,
                  subject: tuple[str, ...]) -> tuple[str, str]:
    levels = rule.expand(ident)
    if levels is None:
        return "deny", "template has no safe value for this client: a deny rule then denies"
    if access is Access.SUBSCRIBE:
        if topics.covers(levels, subject):
            return "deny", "covers the whole subscription filter"
        if topics.overlaps(levels, subject):
            return "no-match", "cuts into the filter: enforced per message at delivery"
        return "no-match", "does not overlap the filter"
    if topics.matches(levels, subject):
        return "deny", "matches the topic"
    return "no-match", "does not match the topic"


def _allow_verdict(rule: CompiledRule, ident: Identity, access: Access,
                   subject: tuple[str, ...]) -> tuple[str, str]:
    if access not in rule.grants:
        return "skipped", f"{rule.access} does not grant {access.name.lower()}"
    levels = rule.expand(ident)
    if levels is None:
        return "skipped", "template has no safe value for this client"
    if access is Access.SUBSCRIBE:
        if topics.covers(levels, subject):
            return "allow", "covers the whole subscription filter"
        return "no-match", "does not cover the whole subscription filter"
    if topics.matches(levels, subject):
        return "allow", "matches the topic"
    return "no-match", "does not match the topic"
