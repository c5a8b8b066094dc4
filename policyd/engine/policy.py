"""The compiled, immutable policy and its decision procedure.

Decision order (docs/rules.md has the full reference and the reasons):
  1. UNSUBSCRIBE is always allowed (as in Mosquitto: it can only reduce access).
  2. A topic that is not valid MQTT is denied.
  3. A superuser is allowed everything.
  4. Rules that can apply: the `anonymous` rules for a client without a
     username; otherwise the user's own rules, its groups' rules, the rules of
     every `certificates` entry its attributes match, then the patterns. Looked up by username in a dict: the cost of a check depends
     on the rules of one identity, never on how many identities there are.
  5. Any matching deny rule denies (deny wins across all rule sets).
  6. The first allow rule that matches and grants the access allows.
  7. Otherwise: deny.

With `order: mosquitto` (Mosquitto 2.0's acl_file order, src/security_default.c)
the rules are checked in two stages, each deny-first then allow, and the first
stage that decides wins: (a) the client's own rules (anonymous rules for a
client without a username; user, group and certificates rules otherwise),
(b) the patterns (for a client without a username, those without %u). A
client whose username or client id holds `+` or `#` is denied at stage (b), and
every SUBSCRIBE to a valid filter is granted: messages are checked at delivery.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Optional

from ..identity.spec import IdentityPolicy
from . import topics
from .fastyaml import no_gc
from .loader import CertificateSpec, PolicySpec, RuleSpec, identity_problem
from .model import DENY_FIRST, GRANTS, MOSQUITTO, Access, Decision, Request, TraceStep
from .templates import compile_topic


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
    # one shared string per distinct level: with 100,000 identities the common levels
    # ("fleet", "device") stay in cache and compare by identity
    if "%" in spec.topic:
        levels, slots = compile_topic(spec.topic)
        levels = tuple(map(sys.intern, levels))
    else:
        levels, slots = tuple(map(sys.intern, spec.topic.split("/"))), ()
    return CompiledRule(spec.topic, levels, slots, spec.access, GRANTS[spec.access], spec)


@dataclass(frozen=True, slots=True)  # slots: one object fewer to fetch per decision
class RuleSet:
    """Rules that apply together, denies kept apart so they are checked first."""

    denies: tuple[CompiledRule, ...] = ()
    allows: tuple[CompiledRule, ...] = ()

    @classmethod
    def of(cls, specs: tuple[RuleSpec, ...]) -> "RuleSet":
        return cls.of_compiled([compile_rule(s) for s in specs])

    @classmethod
    def of_compiled(cls, rules: list[CompiledRule]) -> "RuleSet":
        denies = [r for r in rules if r.access == "deny"]
        if not denies:  # the usual case: one pass, no second list
            return cls((), tuple(rules))
        return cls(tuple(denies), tuple(r for r in rules if r.access != "deny"))

    def __len__(self) -> int:
        return len(self.denies) + len(self.allows)


EMPTY = RuleSet()


class UserRuleSets(Mapping[str, RuleSet]):
    """Each identity's rule set (its own rules, then its groups'), compiled on first use.

    Compiling 100,000 identities up front would cost a reload about 0.4 s for
    sets most of which no client asks for before the next reload; compiling
    one on its first check costs that check a few microseconds. Validation is
    already complete (loader.py), so compiling cannot fail. Names not in the
    rules are never stored: a stream of invented usernames cannot grow this.
    Two threads compiling the same identity build equal sets; either may win.
    """

    __slots__ = ("_specs", "_groups", "_compiled", "_group_only")

    def __init__(self, specs: dict[str, tuple[RuleSpec, ...]], groups: dict[str, list[CompiledRule]]):
        self._specs = specs
        self._groups = groups  # identity -> its groups' compiled rules (shared, compiled once)
        self._compiled: dict[str, RuleSet] = {}
        self._group_only = tuple(name for name in groups if name not in specs)

    def get(self, name, default=None):  # the hot path: one dict lookup once compiled
        rules = self._compiled.get(name)
        if rules is None:
            rules = self._compile(name)
        return default if rules is None else rules

    def __getitem__(self, name: str) -> RuleSet:
        rules = self.get(name)
        if rules is None:
            raise KeyError(name)
        return rules

    def _compile(self, name: str) -> RuleSet | None:
        own, grouped = self._specs.get(name), self._groups.get(name)
        if own is None and grouped is None:
            return None  # not in the rules: never stored
        rules = RuleSet.of_compiled([compile_rule(r) for r in own or ()] + (grouped or []))
        self._compiled[name] = rules
        return rules

    def __contains__(self, name: object) -> bool:
        return name in self._specs or name in self._groups

    def __iter__(self) -> Iterator[str]:
        yield from self._specs
        yield from self._group_only

    def __len__(self) -> int:
        return len(self._specs) + len(self._group_only)

    def grants(self, name: str) -> tuple[frozenset[tuple[str, str]], frozenset[str]]:
        """(allow rules as (topic, access), deny topics) of an identity, without compiling:
        what the kick diff compares (rule order and position never change a decision)."""
        rules = [(r.topic, r.access) for r in self._specs.get(name, ())]
        rules += [(r.topic, r.access) for r in self._groups.get(name, ())]
        return (frozenset(r for r in rules if r[1] != "deny"),
                frozenset(topic for topic, access in rules if access == "deny"))

    def tables(self) -> tuple[dict, ...]:
        """The per-identity tables, for CompiledPolicy.retire: the sources first, so that
        a check compiling meanwhile finds nothing to add and the memo only shrinks."""
        return (self._specs, self._groups, self._compiled)

    @property
    def own_specs(self) -> dict[str, tuple[RuleSpec, ...]]:
        """Identity -> its own rules in source form (the table itself: copy it to change it)."""
        return self._specs

    @property
    def compiled(self) -> dict[str, RuleSet]:
        """The rule sets compiled so far (the table itself)."""
        return self._compiled

    @property
    def group_rules(self) -> Mapping[str, list[CompiledRule]]:
        """Identity -> the rules its groups give it."""
        return self._groups

    @property
    def group_only(self) -> tuple[str, ...]:
        """Group members with no `users` entry of their own."""
        return self._group_only


@dataclass(frozen=True)
class CertificateRules:
    """A `certificates` entry: rules for clients whose attributes satisfy every match."""

    name: str
    match: tuple[tuple[str, frozenset[str]], ...]
    rules: RuleSet

    def applies(self, attributes) -> bool:
        return all(not accepted.isdisjoint(attributes.get(attr, ())) for attr, accepted in self.match)

    @classmethod
    def of(cls, spec: CertificateSpec) -> "CertificateRules":
        return cls(spec.name, tuple((a, frozenset(v)) for a, v in spec.match), RuleSet.of(spec.rules))


class _Lifecycle:
    """The one mutable bit of a compiled policy: set, never cleared, when it is retired."""

    __slots__ = ("retired",)

    def __init__(self) -> None:
        self.retired = False


# What a retired policy answers, whatever its tables still hold: a check that raced
# the retirement is asked again of the policy in force (server/service.py).
RETIRED = Decision(False, "retired-policy: this policy was replaced and answers nothing")


@dataclass(frozen=True)
class CompiledPolicy:
    """Immutable once published. The per-identity rule sets are compiled on first use
    (UserRuleSets), a memo that never changes an answer; `retire()` is the only other
    change, and from its first step on every decision of this object is RETIRED."""

    source_file: str
    source_sha256: str
    superusers: frozenset[str]
    users: UserRuleSets   # per identity: own rules + its groups' rules
    patterns: RuleSet
    anonymous: RuleSet
    generation: int = 0
    rule_count: int = 0
    certificates: tuple[CertificateRules, ...] = ()
    # (attribute, value) -> indexes into `certificates` of the entries accepting it
    certificate_index: dict[tuple[str, str], tuple[int, ...]] = field(default_factory=dict)
    identity: IdentityPolicy = IdentityPolicy()  # Authenticate's settings (policyd.identity)
    # Each identity's block as the fast reader found it (empty otherwise): equal text, equal rules.
    user_sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    reader: str = field(default="yaml", compare=False)  # PolicySpec.reader: how the users were read
    order: str = DENY_FIRST
    anonymous_patterns: RuleSet = EMPTY  # order mosquitto: the patterns without %u
    # Identities revoked as devices (policyd.fleet: `policyd device revoke`): besides the deny
    # of every topic, their connections are refused (Authenticate) and ended (CheckAcl).
    revoked_identities: frozenset[str] = frozenset()
    # Not copied by with_generation (init=False): each published object retires on its own.
    lifecycle: _Lifecycle = field(default_factory=_Lifecycle, init=False, compare=False, repr=False)
    # The scopes sent ahead for clients that only the patterns apply to, worked out once per
    # policy object (engine/scope.py: more_scopes); a handful of entries, never one per client.
    scope_memo: dict = field(default_factory=dict, init=False, compare=False, repr=False)

    def rule_sets(self, ident: Identity, attributes=None) -> tuple[RuleSet, ...]:
        """The rule sets that apply to a client, in the order they are checked."""
        return tuple(rules for stage in self.stages(ident, attributes) for rules in stage)

    def stages(self, ident: Identity, attributes=None) -> tuple[tuple[RuleSet, ...], ...]:
        """The rule sets that apply to a client, grouped by stage: within a stage
        any matching deny wins; the first stage that decides is the answer."""
        if ident.anonymous:
            if self.order == MOSQUITTO:
                return (self.anonymous,), (self.anonymous_patterns,)
            return ((self.anonymous,),)
        own = self.users.get(ident.username, EMPTY) if ident.username_safe else EMPTY
        if self.order == MOSQUITTO:
            return (own, *self.certificate_rule_sets(attributes)), (self.patterns,)
        return ((own, *self.certificate_rule_sets(attributes), self.patterns),)

    def certificate_rule_sets(self, attributes) -> tuple[RuleSet, ...]:
        """Rule sets of the entries these attributes match, in file order."""
        if not attributes or not self.certificate_index:
            return ()
        found: set[int] = set()
        for attr, values in attributes.items():
            for value in values:
                found.update(self.certificate_index.get((attr, value), ()))
        return tuple(self.certificates[i].rules for i in sorted(found)
                     if self.certificates[i].applies(attributes))

    @property
    def identity_count(self) -> int:
        return len(self.users) + sum(1 for name in self.superusers if name not in self.users)

    @property
    def retired(self) -> bool:
        return self.lifecycle.retired

    def retire(self, chunk: int = 1000) -> Iterator[None]:
        """Mark this policy retired, then empty its per-identity tables a chunk at
        a time, yielding between chunks.

        Freeing 100,000 identities in one go is one C-level cascade of about
        600,000 objects, some 40 ms during which no other thread can run. The
        mark comes first, so that a check still holding this object (nothing
        proves none does) gets RETIRED from decide() instead of an answer from
        half-emptied tables: with a user's own rules gone and its groups' still
        there, a deny rule would vanish and a group's allow would decide.
        """
        self.lifecycle.retired = True
        self.scope_memo.clear()
        for table in (*self.users.tables(), self.user_sources):
            while table:
                for _ in range(min(chunk, len(table))):
                    table.popitem()
                yield

    def with_generation(self, generation: int) -> "CompiledPolicy":
        return dataclasses.replace(self, generation=generation)

    def with_users(self, entries: Mapping[str, Optional[tuple[RuleSpec, ...]]],
                   sources: Mapping[str, Optional[str]], superusers: Optional[frozenset[str]] = None,
                   revoked_identities: Optional[frozenset[str]] = None) -> "CompiledPolicy":
        """A copy where each name of `entries` has those rules of its own (None: no entry),
        with `sources` as its block text, and `superusers` and `revoked_identities` (None: the
        same ones).

        One device changed in a policy of 100,000: the other identities keep their specs
        and compiled sets (the tables are copied, never shared, so retiring either policy
        cannot empty the other's)."""
        specs, compiled = dict(self.users.own_specs), dict(self.users.compiled)
        user_sources = dict(self.user_sources)
        rule_count = self.rule_count
        for name, rules in entries.items():
            rule_count += len(rules or ()) - len(specs.get(name, ()))
            compiled.pop(name, None)
            if rules is None:
                specs.pop(name, None)
            else:
                specs[name] = rules
            text = sources.get(name)
            if text is None:
                user_sources.pop(name, None)
            else:
                user_sources[name] = text
        users = UserRuleSets(specs, dict(self.users.group_rules))
        users.compiled.update(compiled)
        return dataclasses.replace(
            self, users=users, user_sources=user_sources, rule_count=rule_count,
            superusers=self.superusers if superusers is None else frozenset(superusers),
            revoked_identities=(self.revoked_identities if revoked_identities is None
                                else frozenset(revoked_identities)))

    def decide(self, request: Request, ident: Optional[Identity] = None,
               stages: Optional[tuple[tuple[RuleSet, ...], ...]] = None) -> Decision:
        """`ident` and `stages`, when given, are Identity.of(request.username, request.clientid)
        and self.stages(ident, request.attributes): one client's several questions in one check
        (its answer, then the scopes sent ahead) work them out once."""
        decision = _evaluate(self, request, None, ident, stages)
        # Read after the tables: a retirement that began during the decision is seen here.
        return RETIRED if self.lifecycle.retired else decision

    def explain(self, request: Request) -> Decision:
        trace: list[TraceStep] = []
        decision = _evaluate(self, request, trace)
        if self.lifecycle.retired:
            return RETIRED
        return dataclasses.replace(decision, trace=tuple(trace))


def compile_policy(spec: PolicySpec) -> CompiledPolicy:
    with no_gc():  # hundreds of thousands of small objects, no cycles: see fastyaml
        return _compile(spec)


def _compile(spec: PolicySpec) -> CompiledPolicy:
    from_groups: dict[str, list[CompiledRule]] = {}
    for group in spec.groups:
        group_rules = [compile_rule(r) for r in group.rules]  # once per group, shared by members
        for member in group.members:
            from_groups.setdefault(member, []).extend(group_rules)
    users = UserRuleSets(spec.users, from_groups)
    certificates = tuple(CertificateRules.of(c) for c in spec.certificates)
    index: dict[tuple[str, str], list[int]] = {}
    for i, entry in enumerate(certificates):
        for attr, accepted in entry.match:
            for value in accepted:
                index.setdefault((attr, value), []).append(i)
    rule_count = (sum(len(r) for r in spec.users.values()) + sum(len(g.rules) for g in spec.groups)
                  + sum(len(c.rules) for c in spec.certificates) + len(spec.patterns) + len(spec.anonymous))
    return CompiledPolicy(
        source_file=spec.file,
        source_sha256=spec.sha256,
        superusers=frozenset(spec.superusers),
        users=users,
        patterns=RuleSet.of(spec.patterns),
        anonymous=RuleSet.of(spec.anonymous),
        rule_count=rule_count,
        certificates=certificates,
        certificate_index={k: tuple(v) for k, v in index.items()},
        identity=IdentityPolicy(spec.identity, spec.revoked, spec.passwords),
        user_sources=spec.user_sources,
        reader=spec.reader,
        order=spec.order,
        anonymous_patterns=RuleSet.of(tuple(r for r in spec.patterns if "%u" not in r.templates)),
    )


def _subject(access: Access, topic: str) -> tuple[str, ...]:
    """Levels of the checked topic; raises TopicError when MQTT forbids it."""
    if access is Access.SUBSCRIBE:
        return topics.validate_filter(topics.strip_shared(topic))
    return topics.validate_name(topic)


def _evaluate(policy: CompiledPolicy, request: Request, trace: Optional[list[TraceStep]],
              ident: Optional[Identity] = None, stages=None) -> Decision:
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
    if ident is None:
        ident = Identity.of(request.username, request.clientid)
    unbound = _client_id_problem(policy, ident)
    if unbound:
        return Decision(False, f"client-id-not-bound: {unbound}", ends_session=True)
    if ident.username_safe and ident.username in policy.superusers:
        return Decision(True, "superuser")

    if access is Access.SUBSCRIBE and policy.order == MOSQUITTO:
        return Decision(True, "subscribe-granted: order mosquitto checks each message at delivery")

    if stages is None:
        stages = policy.stages(ident, request.attributes)
    for number, stage in enumerate(stages):
        if number and policy.order == MOSQUITTO and _wildcard_identity(request):
            return Decision(False, "wildcard-identity: a username or client id with + or # "
                                   "gets nothing from patterns (order mosquitto)")
        decision = _evaluate_stage(stage, ident, access, subject, trace)
        if decision is not None:
            return decision
    return Decision(False, "default-deny: no rule grants this")


def _wildcard_identity(request: Request) -> bool:
    for value in (request.username, request.clientid):
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if value is not None and ("+" in value or "#" in value):
            return True
    return False


def _evaluate_stage(stage: tuple[RuleSet, ...], ident: Identity, access: Access, subject: tuple[str, ...],
                    trace: Optional[list[TraceStep]]) -> Optional[Decision]:
    for rules in stage:
        for rule in rules.denies:
            verdict = _deny_verdict(rule, ident, access, subject)
            if trace is not None:
                trace.append(TraceStep(rule, verdict[0], verdict[1]))
            if verdict[0] == "deny":
                return Decision(False, "deny-rule", rule)

    for rules in stage:
        for rule in rules.allows:
            verdict = _allow_verdict(rule, ident, access, subject)
            if trace is not None:
                trace.append(TraceStep(rule, verdict[0], verdict[1]))
            if verdict[0] == "allow":
                return Decision(True, "rule", rule)
    return None


def _client_id_problem(policy: CompiledPolicy, ident: Identity) -> Optional[str]:
    spec = policy.identity.spec
    if not spec.client_ids:
        return None
    return spec.client_id_problem(ident.username if ident.username_safe else None, ident.clientid)


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
