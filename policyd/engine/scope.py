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
from .model import Access, Decision, Request
from .policy import CompiledPolicy, CompiledRule, Identity, RuleSet

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
    """Scopes the client's READ and WRITE allows reach, sent ahead of the checks that would find them.

    Nothing is proved here: each is what a check of one topic under an allow rule's filter
    would get (the engine's decision for that topic, then cache_scope), so a scope sent ahead
    is exactly one a later miss could have brought. At most `limit` per access, and as many
    probes as that needs twice over, whatever the number of rules. `ident` and `stages`: as for
    CompiledPolicy.decide; every probe is the same client's, so they are worked out once.
    """
    if ident is None:
        ident = Identity.of(request.username, request.clientid)
    if stages is None:
        stages = policy.stages(ident, request.attributes)
    probes: list[tuple[frozenset, str]] = []
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
    return found
