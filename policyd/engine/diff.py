"""Which identities a new policy takes access away from: the kick list of a reload.

A pure function of two compiled policies. An identity is kicked when its own
access (superuser status, its `users` entry and the rules of its groups) may
have shrunk:

- it was a superuser and is not any more;
- it had rules and lost any allow rule (removed, or changed: a changed rule
  is a removed one plus an added one), or gained any deny rule.

Only *adding* allow rules, or removing deny rules, can never take anything
away (decisions are deny-first, then any allow), so those kick nobody.

Changes that may take access from a whole class of clients — `patterns`,
`certificates` entries, the client id binding or the certificate mapping
(every named client), `anonymous` (every anonymous one) — cannot be narrowed to
names here: the daemon keeps no sessions. They add a class token to the kick
list (KICK_ALL_NAMED, KICK_ANONYMOUS); each broker disconnects the clients of
that class it has. Messages already queued for a client are not checked again
by Mosquitto, so only a disconnect stops their delivery (docs/operations.md).

With `order: mosquitto` the same holds: a client's own rules come first and,
inside each stage, denies first, so adding an allow or removing a deny still
never takes anything away. Leaving that order for the default one can: a
pattern deny then beats the user's own allows, so every identity with allow
rules of its own is kicked when the new patterns have a deny (the reverse
change only ever allows more).

Rule order within a rule set does not change any allow/deny outcome, so rules
are compared as sets of (topic, access); a rule's source position is not part
of that, so moving a rule in the file or editing elsewhere kicks nobody. Rules
are compared in source form, so a reload compiles nothing to work this out.
"""

from __future__ import annotations

from typing import Iterable

from .model import MOSQUITTO
from .policy import CompiledPolicy

Grants = tuple[frozenset[tuple[str, str]], frozenset[str]]  # UserRuleSets.grants

# Class tokens in a kick list. NUL can never be in an identity, so no username
# is ever mistaken for one.
KICK_ALL_NAMED = "\x00all-named"
KICK_ANONYMOUS = "\x00anonymous"
CLASS_TOKENS = frozenset({KICK_ALL_NAMED, KICK_ANONYMOUS})


def lost_access(old: Grants, new: Grants) -> bool:
    """True when `new` may allow less than `old` for the identity they belong to."""
    (old_allows, old_denies), (new_allows, new_denies) = old, new
    return not old_allows <= new_allows or not new_denies <= old_denies


def usernames_to_kick(old: CompiledPolicy, new: CompiledPolicy) -> frozenset[str]:
    """Identities whose access `new` may have reduced; sorted use is up to the caller."""
    kicked = set(old.superusers - new.superusers)
    if old.order == MOSQUITTO and new.order != MOSQUITTO and new.patterns.denies:
        kicked.update(name for name in new.users
                      if name not in new.superusers and new.users.grants(name)[0])
    by_text = _by_text(old, new)
    for name in _maybe_changed(old, new, by_text):
        if name in new.superusers or name in kicked:
            continue
        if lost_access(old.users.grants(name), new.users.grants(name)):
            kicked.add(name)
    for name in _added(old, new, by_text):
        # Not in old.users: its only rules were patterns before; a deny of its
        # own is the one way a new entry can take something away.
        if name not in new.superusers and name not in old.superusers and new.users.grants(name)[1]:
            kicked.add(name)
    return frozenset(kicked) | classes_to_kick(old, new)


def classes_to_kick(old: CompiledPolicy, new: CompiledPolicy) -> frozenset[str]:
    """KICK_ALL_NAMED / KICK_ANONYMOUS when `new` may take access from every client of that class."""
    out = set()
    if lost_access(rule_set_grants(old.patterns), rule_set_grants(new.patterns)) \
            or _certificates_lost(old, new) or _identity_narrowed(old, new):
        out.add(KICK_ALL_NAMED)
    if lost_access(rule_set_grants(old.anonymous), rule_set_grants(new.anonymous)):
        out.add(KICK_ANONYMOUS)
    return frozenset(out)


def rule_set_grants(rules) -> Grants:
    """A compiled RuleSet's rules in the form `lost_access` compares."""
    return (frozenset((r.topic, r.access) for r in rules.allows), frozenset(r.topic for r in rules.denies))


def _certificates_lost(old: CompiledPolicy, new: CompiledPolicy) -> bool:
    """An entry's match or rules changed in a way that may take access away. Entries
    are compared by their match: a changed match is a removed entry plus an added one."""
    before = {entry.match: rule_set_grants(entry.rules) for entry in old.certificates}
    after = {entry.match: rule_set_grants(entry.rules) for entry in new.certificates}
    for match, grants in before.items():
        if match not in after or lost_access(grants, after[match]):
            return True
    return any(match not in before and grants[1] for match, grants in after.items())


def _identity_narrowed(old: CompiledPolicy, new: CompiledPolicy) -> bool:
    """The client id binding or the certificate mapping changed (sessions may no
    longer match what their certificate or client id allows)."""
    a, b = old.identity.spec, new.identity.spec
    if a.client_ids != b.client_ids and b.client_ids:
        return True
    return (a.source, a.template, a.issuer_files, a.check_expiry) != (b.source, b.template, b.issuer_files,
                                                                      b.check_expiry)


def usernames_to_kick_among(old: CompiledPolicy, new: CompiledPolicy, names: Iterable[str]) -> frozenset[str]:
    """usernames_to_kick when only `names` can differ between the two policies (one
    device changed): the same rules, without visiting every identity."""
    kicked = set()
    for name in names:
        if name in new.superusers:
            continue
        if name in old.superusers:
            kicked.add(name)
        elif name in old.users:
            if lost_access(old.users.grants(name), new.users.grants(name)):
                kicked.add(name)
        elif new.users.grants(name)[1]:
            kicked.add(name)
    return frozenset(kicked)


def _by_text(old: CompiledPolicy, new: CompiledPolicy) -> bool:
    """Whether identities can be compared by their block text: both files were
    read by the fast reader (which keeps every block) and the groups are the same."""
    return bool(old.user_sources and new.user_sources) and old.users.group_rules == new.users.group_rules


def _maybe_changed(old: CompiledPolicy, new: CompiledPolicy, by_text: bool) -> Iterable[str]:
    """Identities of `old` whose rules may differ in `new`. Equal text means equal
    rules, so for 100,000 identities this is a few milliseconds of dict work."""
    if not by_text:
        return old.users
    new_text = new.user_sources
    return [name for name, text in old.user_sources.items() if new_text.get(name) != text] + [
        *old.users.group_only]


def _added(old: CompiledPolicy, new: CompiledPolicy, by_text: bool) -> Iterable[str]:
    """Identities with rules in `new` and none in `old`."""
    if not by_text:
        return [name for name in new.users if name not in old.users]
    names = new.user_sources.keys() - old.user_sources.keys()
    return [name for name in [*names, *new.users.group_only] if name not in old.users]
