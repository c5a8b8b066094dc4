"""Warnings for allow rules that can never take effect because a deny covers them.

Deny rules are checked first (docs/rules.md), so an allow rule whose every
topic is also matched by a deny in the same scope is dead text — usually a
mistake worth pointing at. Scopes checked:
  * each user's own rules, against its own denies, its groups' and the patterns' denies
    (`%u` is that user's name, so `/device/%u/#` denies `/device/Device1/x` for Device1);
  * each group's rules, against the group's and the patterns' denies;
  * each certificates entry's rules, against the entry's and the patterns' denies;
  * the patterns, and the anonymous rules, each against their own denies.
With `order: mosquitto` a client's own rules decide before the patterns, so the
patterns' denies are left out of every scope but the patterns' own.
A template level that is not known statically is kept as an opaque token, so
only a deny that covers it for every value (`+`, `#`, or the same template) counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator, Optional

from . import topics
from .model import MOSQUITTO, Problem
from .templates import compile_topic

if TYPE_CHECKING:
    from .loader import PolicySpec, RuleSpec

_OPAQUE = "\x00"  # cannot occur in a valid topic, so it never equals a literal level
_ANY_FIRST = frozenset(("+", "#", _OPAQUE + "%u", _OPAQUE + "%c"))  # first levels that skip the prefilter


def _levels(rule: "RuleSpec", username: Optional[str]) -> tuple[str, ...]:
    levels, slots = compile_topic(rule.topic)
    if not slots:
        return levels
    out = list(levels)
    for index, template in slots:
        out[index] = username if template == "%u" and username else _OPAQUE + template
    return tuple(out)


def _split(rules: Iterable["RuleSpec"]) -> tuple[list["RuleSpec"], list["RuleSpec"]]:
    denies, allows = [], []
    for rule in rules:
        (denies if rule.access == "deny" else allows).append(rule)
    return denies, allows


def _check(allows: list["RuleSpec"], denies: list["RuleSpec"], username: Optional[str],
           scope: str) -> Iterator[Problem]:
    if not denies or not allows:
        return
    deny_levels = [(deny, _levels(deny, username)) for deny in denies]
    firsts = {levels[0] for _, levels in deny_levels}
    for allow in allows:
        first = allow.topic.split("/", 1)[0]
        if "%" not in first and first not in firsts and firsts.isdisjoint(_ANY_FIRST):
            continue  # no deny can cover it: they differ at the first level (the usual case)
        target = _levels(allow, username)
        deny = next((d for d, levels in deny_levels if topics.covers(levels, target)), None)
        if deny is not None:
            yield Problem(allow.ref, f"never takes effect{scope}: the deny rule at {deny.ref.file}:"
                                     f"{deny.ref.line} ({deny.topic}) covers it and denies are checked first",
                          "warning")


def shadow_warnings(spec: "PolicySpec") -> list[Problem]:
    pattern_denies, pattern_allows = _split(spec.patterns)
    out = list(_check(pattern_allows, pattern_denies, None, ""))
    if spec.order == MOSQUITTO:
        pattern_denies = []  # a later stage: it cannot shadow a client's own rules
    anon_denies, anon_allows = _split(spec.anonymous)
    out += _check(anon_allows, anon_denies, None, "")

    group_denies: dict[str, list["RuleSpec"]] = {}
    for group in spec.groups:
        denies, allows = _split(group.rules)
        out += _check(allows, denies + pattern_denies, None, f" for the members of {group.name}")
        for member in group.members:
            group_denies.setdefault(member, []).extend(denies)
    for entry in spec.certificates:
        denies, allows = _split(entry.rules)
        out += _check(allows, denies + pattern_denies, None, f" for clients matching {entry.name}")

    # First levels the pattern denies can cover; None when one starts with a wildcard or template.
    firsts = {d.topic.split("/", 1)[0] for d in pattern_denies}
    pattern_firsts = None if any("%" in f or f in ("+", "#") for f in firsts) else firsts
    for name, rules in spec.users.items():
        if len(rules) < 2 and not pattern_denies and name not in group_denies:
            continue  # one rule, and no deny from elsewhere: nothing to shadow (100,000 device blocks)
        denies = [r for r in rules if r.access == "deny"]
        if not denies and name not in group_denies and pattern_firsts is not None and all(
                "%" not in (first := r.topic.split("/", 1)[0]) and first not in pattern_firsts for r in rules):
            continue  # nothing can cover these rules (the usual case for 100,000 device blocks)
        allows = [r for r in rules if r.access != "deny"]
        out += _check(allows, denies + group_denies.get(name, []) + pattern_denies, name, f" for {name}")
    return out
