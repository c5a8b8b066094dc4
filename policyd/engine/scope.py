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
  that applies to the identity can match any topic under it;
- denied by deny rule D: D's filter for this identity (deny wins whatever
  else matches); a deny rule whose template has no safe value denies every
  topic -> `#`;
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


def cache_scope(policy: CompiledPolicy, request: Request, decision: Decision) -> Optional[str]:
    """A filter over which `decision` holds for this identity and access, or None."""
    if Access(request.access) not in (Access.READ, Access.WRITE) or not isinstance(request.topic, (str, bytes)):
        return None
    scope = _scope(policy, request, decision)
    topic = request.topic.decode("utf-8", "replace") if isinstance(request.topic, bytes) else request.topic
    # Belt and braces: a scope that does not even hold the asked topic is a bug; send none.
    if scope is None or not topics.matches(topics.split(scope), topics.split(topic)):
        return None
    return scope


def _scope(policy: CompiledPolicy, request: Request, decision: Decision) -> Optional[str]:
    ident = Identity.of(request.username, request.clientid)
    if decision.allowed and decision.reason == "superuser":
        return MATCH_EVERYTHING
    rule = decision.rule
    if not isinstance(rule, CompiledRule):
        return None
    if decision.allowed and decision.reason == "rule" and not rule.deny:
        return _allow_scope(rule, _rule_sets(policy, ident, request), ident)
    if not decision.allowed and decision.reason == "deny-rule" and rule.deny:
        levels = rule.expand(ident)
        return MATCH_EVERYTHING if levels is None else _join(levels)
    return None


def _rule_sets(policy: CompiledPolicy, ident: Identity, request: Request) -> tuple[RuleSet, ...]:
    """The rule sets that apply to this identity (the same call policy._evaluate makes,
    so `certificates` entries matched by the request's attributes are included)."""
    return policy.rule_sets(ident, request.attributes)


def _allow_scope(rule: CompiledRule, rule_sets: tuple[RuleSet, ...], ident: Identity) -> Optional[str]:
    levels = rule.expand(ident)
    if levels is None:
        return None
    for rules in rule_sets:
        for deny in rules.denies:
            deny_levels = deny.expand(ident)
            # No safe value: that deny rule denies everything, so nothing is provable.
            if deny_levels is None or topics.overlaps(deny_levels, levels):
                return None
    return _join(levels)


def _join(levels: tuple[str, ...]) -> str:
    return "/".join(levels)
