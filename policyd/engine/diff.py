"""Which identities a new policy takes access away from: the kick list of a reload.

A pure function of two compiled policies. An identity is kicked when its own
access (superuser status, its `users` entry and the rules of its groups) may
have shrunk:

- it was a superuser and is not any more;
- it had rules and lost any allow rule (removed, or changed: a changed rule
  is a removed one plus an added one), or gained any deny rule.

Only *adding* allow rules, or removing deny rules, can never take anything
away (decisions are deny-first, then any allow), so those kick nobody. Neither
do changes to `patterns` or `anonymous`: they concern every client alike, and
kicking everyone for them would be a reconnect storm; every publish and every
delivery is checked again under the new generation anyway (docs/operations.md).

Rule order within a rule set does not change any allow/deny outcome, so rules
are compared as sets; a rule's source position is not part of its identity
(`CompiledRule.source` is excluded from comparison), so moving a rule in the
file or editing elsewhere kicks nobody.
"""

from __future__ import annotations

from .policy import EMPTY, CompiledPolicy, RuleSet


def lost_access(old: RuleSet, new: RuleSet) -> bool:
    """True when `new` may allow less than `old` for the identity they belong to."""
    if old is new or old == new:  # the common case, and cheap: no sets built
        return False
    if not set(old.allows) <= set(new.allows):
        return True
    return not set(new.denies) <= set(old.denies)


def usernames_to_kick(old: CompiledPolicy, new: CompiledPolicy) -> frozenset[str]:
    """Identities whose access `new` may have reduced; sorted use is up to the caller."""
    kicked = set(old.superusers - new.superusers)
    for name, old_rules in old.users.items():
        if name in new.superusers or name in kicked:
            continue
        if lost_access(old_rules, new.users.get(name, EMPTY)):
            kicked.add(name)
    for name, new_rules in new.users.items():
        # Not in old.users: its only rules were patterns before; a deny of its
        # own is the one way a new entry can take something away.
        if name not in old.users and name not in new.superusers and name not in old.superusers:
            if new_rules.denies:
                kicked.add(name)
    return frozenset(kicked)
