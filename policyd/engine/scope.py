"""How far an answer reaches: the `cache_scope` of a CheckAcl response.

Given a decision for one topic, find a topic filter under which *every*
topic gets the same answer for the same identity (username, client id) and
access, so the shim may cache the answer for the whole filter. Returned only
when it can be proved from the policy; otherwise None (the answer is then
cached for the one topic). Being wrong here would let a cached answer
overrule the policy, so every rule is conservative:

- superuser: every valid topic name is allowed -> `#` (which, by MQTT's
  `$` rule, does not reach `$SYS/...`; the shim matches the same way);
- allowed by rule R: R's filter for this identity, provided no deny rule
  checked with or before R (every deny rule, in the default order) can match
  any topic under it;
- denied by deny rule D: D's filter for this identity (deny wins whatever
  else matches in its stage); a deny rule whose template has no safe value
  denies every topic -> `#`. With `order: mosquitto`, a pattern deny only when
  no rule of the client's own stage could allow any topic under it;
- anything else (default deny, invalid topic, SUBSCRIBE, UNSUBSCRIBE): None.

Only READ and WRITE (topic names) get a scope: a subscription is a filter,
and "covers" is not a per-topic property the shim could match.
"""

from __future__ import annotations

from typing import Optional

from . import topics
from .model import MAX_IDENTITY_BYTES, MOSQUITTO, Access, Decision, Request
from .policy import EMPTY, CompiledPolicy, CompiledRule, Identity, RuleSet

MATCH_EVERYTHING = "#"
# A level standing in for `+` and `#` when probing under a rule's filter.
PROBE_LEVEL = "x"
# Scopes per access sent ahead (the shim keeps 8 per access and client).
MORE_SCOPES_MAX = 8


def cache_scope(policy: CompiledPolicy, request: Request, decision: Decision, ident: Optional[Identity] = None,
                stages=None) -> Optional[str]:
    """A filter over which `decision` holds for this identity and access, or None.
    `ident` and `stages`: as for CompiledPolicy.decide (worked out here when not given)."""
    if Access(request.access) not in (Access.READ, Access.WRITE) or not isinstance(request.topic, (str, bytes)):
        return None
    scope = _scope(policy, request, decision, ident, stages)
    topic = request.topic.decode("utf-8", "replace") if isinstance(request.topic, bytes) else request.topic
    # Belt and braces: a scope that does not even hold the asked topic is a bug; send none.
    if scope is None or not topics.matches(topics.split(scope), topics.split(topic)):
        return None
    return scope


def _scope(policy: CompiledPolicy, request: Request, decision: Decision, ident: Optional[Identity],
           stages) -> Optional[str]:
    if decision.allowed and decision.reason == "superuser":
        return MATCH_EVERYTHING
    rule = decision.rule
    if not isinstance(rule, CompiledRule):
        return None
    if ident is None:
        ident = Identity.of(request.username, request.clientid)
    if stages is None:
        # the same call policy._evaluate makes, so `certificates` entries matched by the
        # request's attributes are included
        stages = policy.stages(ident, request.attributes)
    deciding = next((i for i, stage in enumerate(stages) if any(rule in rs.denies or rule in rs.allows
                                                                  for rs in stage)), None)
    if deciding is None:
        return None
    if decision.allowed and decision.reason == "rule" and not rule.deny:
        return _allow_scope(rule, stages[:deciding + 1], ident)
    if not decision.allowed and decision.reason == "deny-rule" and rule.deny:
        return _deny_scope(rule, stages[:deciding], ident, Access(request.access))
    return None


def _allow_scope(rule: CompiledRule, stages: tuple[tuple[RuleSet, ...], ...], ident: Identity) -> Optional[str]:
    """An allow holds over its filter when no deny of its stage or an earlier one can match there
    (an earlier stage's allow only allows too)."""
    levels = rule.expand(ident)
    if levels is None:
        return None
    for stage in stages:
        for rules in stage:
            for deny in rules.denies:
                deny_levels = deny.expand(ident)
                # No safe value: that deny rule denies everything, so nothing is provable.
                if deny_levels is None or topics.overlaps(deny_levels, levels):
                    return None
    return _join(levels)


def _deny_scope(rule: CompiledRule, earlier: tuple[tuple[RuleSet, ...], ...], ident: Identity,
                access: Access) -> Optional[str]:
    """A deny holds over its filter when no earlier stage can allow there (within its own
    stage, deny wins whatever else matches)."""
    levels = rule.expand(ident)
    levels = (MATCH_EVERYTHING,) if levels is None else levels
    for stage in earlier:
        for rules in stage:
            if rules.denies:
                return None  # an earlier stage's deny would have decided a part of it first: keep it simple
            for allow in rules.allows:
                allow_levels = allow.expand(ident)
                if access in allow.grants and allow_levels is not None and topics.overlaps(allow_levels, levels):
                    return None
    return _join(levels)

def _join(levels: tuple[str, ...]) -> str:
    return "/".join(levels)


def more_scopes(policy: CompiledPolicy, request: Request, limit: int = MORE_SCOPES_MAX,
                ident: Optional[Identity] = None, stages=None) -> list[tuple[Access, str]]:
    """Scopes the client's READ and WRITE allows reach, and SUBSCRIBE answers for its allow rules'
    own filters, sent ahead of the checks that would find them.

    Nothing is proved here: each is what a check of one topic under an allow rule's filter
    would get (the engine's decision for that topic, then cache_scope), so a scope sent ahead
    is exactly one a later miss could have brought. At most `limit` per access, and as many
    probes as that needs twice over, whatever the number of rules. `ident` and `stages`: as for
    CompiledPolicy.decide; every probe is the same client's, so they are worked out once.

    A client that only the patterns apply to gets the probes' outcome for a stand-in identity,
    worked out once per policy, with its own names put back (_stand_in_shape says why that is
    the same answer).
    """
    if ident is None:
        ident = Identity.of(request.username, request.clientid)
    if stages is None:
        stages = policy.stages(ident, request.attributes)
    same = _stand_in_shape(policy, ident, stages)
    if same is None:
        return _probed(policy, request, limit, ident, stages)
    key = (same, limit)
    found = policy.scope_memo.get(key)
    if found is None:
        found = _stand_in_scopes(policy, request, limit, same)
        if found is None:
            return _probed(policy, request, limit, ident, stages)
        if not policy.retired:  # a retired policy's probes answer RETIRED: never kept
            policy.scope_memo[key] = found
            if policy.retired:  # retired between the two reads: its clear() may have come first
                policy.scope_memo.pop(key, None)
    if policy.retired:
        return []
    user, client = _stand_ins(policy)[1:]
    names = {user: ident.username, client: ident.clientid}
    return [(access, "/".join([names.get(level, level) for level in levels])) for access, levels in found]


def _probed(policy: CompiledPolicy, request: Request, limit: int, ident: Identity,
            stages) -> list[tuple[Access, str]]:
    """more_scopes by probing under each allow rule of this client (no memo)."""
    probes: list[tuple[frozenset, str]] = []
    filters: list[str] = []   # the allow rules' own filters, as a client would subscribe
    if ident.username_safe and ident.username in policy.superusers:
        probes.append((frozenset((Access.READ, Access.WRITE)), PROBE_LEVEL))
    else:
        for stage in stages:
            for rules in stage:
                for rule in rules.allows:
                    levels = rule.expand(ident)
                    if levels is not None and len(probes) < 4 * limit:
                        probes.append((rule.grants, "/".join(PROBE_LEVEL if level in ("+", MATCH_EVERYTHING)
                                                             else level for level in levels)))
                        if Access.SUBSCRIBE in rule.grants:
                            filters.append(_join(levels))
    found: list[tuple[Access, str]] = []
    for access in (Access.READ, Access.WRITE):
        scopes: list[str] = []
        for grants, topic in probes:
            if len(scopes) >= limit:
                break
            if access not in grants:
                continue
            probe = Request(request.username, request.clientid, topic, access, request.attributes)
            decision = policy.decide(probe, ident, stages)
            scope = cache_scope(policy, probe, decision, ident, stages) if decision.allowed else None
            if scope is not None and scope not in scopes:
                scopes.append(scope)
        found += [(access, scope) for scope in scopes]
    return found + _subscriptions(policy, request, limit, ident, stages, filters)


def _subscriptions(policy: CompiledPolicy, request: Request, limit: int, ident: Identity, stages,
                   filters: list[str]) -> list[tuple[Access, str]]:
    """SUBSCRIBE answers sent ahead: each allow rule's own filter, as the device subscribes to it,
    with the engine's decision for exactly that filter (cached for that filter only, no scope)."""
    found: list[tuple[Access, str]] = []
    for topic in filters:
        if len(found) >= limit:
            break
        probe = Request(request.username, request.clientid, topic, Access.SUBSCRIBE, request.attributes)
        if (Access.SUBSCRIBE, topic) not in found and policy.decide(probe, ident, stages).allowed:
            found.append((Access.SUBSCRIBE, topic))
    return found


def _stand_in_shape(policy: CompiledPolicy, ident: Identity, stages) -> Optional[bool]:
    """Whether the client's username is its client id, when its scopes sent ahead are those of a
    stand-in identity with the names swapped; None when that is not shown.

    Shown when only the patterns apply (not anonymous, no rules of its own, no `certificates`
    entry, not a superuser, no client-id binding) and both names are safe and none of the
    patterns' levels nor the probe level: every step of a probe (templates, matching, `$` and
    wildcard tests, the topic checks) then sees each name only as a whole level, compared for
    equality with other levels, so renaming both, keeping whether they are equal, renames the
    outcome. Topic lengths too: only when no probe can reach MQTT's limit whatever the names.
    """
    if not (ident.username_safe and ident.clientid_safe) or ident.anonymous:
        return None
    if ident.username in policy.superusers or ident.username in policy.revoked_identities:
        return None
    if policy.identity.spec.client_ids or not _only_patterns(policy, stages):
        return None
    stand_ins = _stand_ins(policy)
    if stand_ins is None or ident.username in stand_ins[0] or ident.clientid in stand_ins[0]:
        return None
    return ident.username == ident.clientid


def _only_patterns(policy: CompiledPolicy, stages) -> bool:
    """stages are what a client gets that has no rules of its own and no `certificates` entry."""
    if policy.order == MOSQUITTO:
        return (len(stages) == 2 and len(stages[0]) == 1 and stages[0][0] is EMPTY
                and len(stages[1]) == 1 and stages[1][0] is policy.patterns)
    return len(stages) == 1 and len(stages[0]) == 2 and stages[0][0] is EMPTY and stages[0][1] is policy.patterns


def _stand_ins(policy: CompiledPolicy):
    """(names a client's may not be: the patterns' levels, the probe level, the stand-ins;
    stand-in username; stand-in client id), or None when the patterns are too long for any."""
    found = policy.scope_memo.get("stand-ins", False)
    if found is not False:
        return found
    rules = (*policy.patterns.denies, *policy.patterns.allows)
    levels = {PROBE_LEVEL, MATCH_EVERYTHING, "+"}.union(*(rule.levels for rule in rules))
    longest = max((len(rule.topic.encode("utf-8", "surrogatepass")) + len(rule.slots) * MAX_IDENTITY_BYTES
                   for rule in rules), default=0)
    found = None
    if longest <= topics.MAX_TOPIC_BYTES:
        taken = levels | set(policy.superusers) | set(policy.revoked_identities)
        user, client, n = "policyd-stand-in-u", "policyd-stand-in-c", 0
        while {user, client} & taken or user in policy.users or client in policy.users:
            n += 1
            user, client = f"policyd-stand-in-u{n}", f"policyd-stand-in-c{n}"
        found = (frozenset(levels | {user, client}), user, client)
    if not policy.retired:
        policy.scope_memo["stand-ins"] = found
    return found


def _stand_in_scopes(policy: CompiledPolicy, request: Request, limit: int,
                     same: bool) -> Optional[list[tuple[Access, tuple[str, ...]]]]:
    """The probes' outcome for the stand-in identity, scopes as levels; None if the stand-in
    does not get the same rule sets (then nothing is kept)."""
    _, user, client = _stand_ins(policy)
    client = user if same else client
    ident = Identity.of(user, client)
    stages = policy.stages(ident, request.attributes)
    if not _only_patterns(policy, stages):
        return None
    stand_in = Request(user, client, request.topic, request.access, request.attributes)
    return [(access, tuple(scope.split("/"))) for access, scope in _probed(policy, stand_in, limit, ident, stages)]
