"""Mosquitto 2.0.11's acl_file, as a test oracle, and a generator of realistic acl_files.

`MosquittoAcl` follows src/security_default.c of 2.0.11 step by step (aclfile__parse,
add__acl, add__acl_pattern, mosquitto_acl_check_default, acl__find_acls) and
lib/util_topic.c's mosquitto_topic_matches_sub, written from that source and not
from policyd's engine, so comparing the two tests the engine. The end-to-end
differential test (tests/e2e/test_import_acl_differential.py) checks the oracle
itself against the real broker.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Optional

READ, WRITE, SUBSCRIBE, UNSUBSCRIBE = 1, 2, 4, 8
_ACCESS = {"read": READ, "write": WRITE, "readwrite": READ | WRITE, "deny": 0}


class AclRefused(ValueError):
    """Mosquitto would not start with this acl_file."""


@dataclass
class _Rule:
    topic: str
    access: int          # bits; 0 = deny
    ucount: int = 0
    ccount: int = 0


@dataclass
class MosquittoAcl:
    users: list[tuple[Optional[str], list[_Rule]]] = field(default_factory=list)  # acl_list, file order
    patterns: list[_Rule] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> "MosquittoAcl":
        acl = cls()
        user: Optional[str] = None
        for raw in text.split("\n"):
            buf = raw
            while buf and buf[-1].isspace():
                buf = buf[:-1]
            if buf.startswith("#"):
                continue
            tokens = buf.split(" ")
            tokens_nonempty = [t for t in tokens if t]
            if not tokens_nonempty:
                continue
            token = tokens_nonempty[0]
            rest = buf.lstrip(" ")[len(token):]
            if token in ("topic", "pattern"):
                rest = rest.lstrip(" ")
                if not rest:
                    raise AclRefused("empty topic")
                access_s, sep, topic = rest.partition(" ")
                topic = topic.strip()  # misc__trimblanks
                if not topic:
                    # strtok_r(NULL, "") returns NULL when nothing follows the access word
                    access_s, topic = None, access_s
                if access_s is None:
                    access = READ | WRITE
                elif access_s in _ACCESS:
                    access = _ACCESS[access_s]
                else:
                    raise AclRefused(f"invalid access {access_s!r}")
                if not _sub_topic_ok(topic):
                    raise AclRefused(f"invalid topic {topic!r}")
                if token == "topic":
                    acl._add(user, topic, access)
                else:
                    acl._add_pattern(topic, access)
            elif token == "user":
                name = rest.strip()
                if not name:
                    raise AclRefused("missing username")
                user = name
            else:
                raise AclRefused(f"invalid line {buf!r}")
        return acl

    def _add(self, user: Optional[str], topic: str, access: int) -> None:
        for name, rules in self.users:
            if name == user:
                break
        else:
            rules = []
            self.users.append((user, rules))
        if access == 0:
            rules.insert(0, _Rule(topic, access))  # "deny" acls at the front
        else:
            rules.append(_Rule(topic, access))

    def _add_pattern(self, topic: str, access: int) -> None:
        rule = _Rule(topic, access, topic.count("%u"), topic.count("%c"))
        if access == 0:
            self.patterns.insert(0, rule)
        else:
            self.patterns.append(rule)

    def own_rules(self, username: Optional[str]) -> Optional[list[_Rule]]:
        for name, rules in self.users:
            if name == username:
                return rules
        return None

    def decide(self, username: Optional[str], clientid: str, topic: str, access: int) -> bool:
        """mosquitto_acl_check_default: True = MOSQ_ERR_SUCCESS."""
        if access in (SUBSCRIBE, UNSUBSCRIBE):
            return True
        own = self.own_rules(username)
        if own is None and not self.patterns:
            return False
        for rule in own or ():
            if topic.startswith("$") and not rule.topic.startswith("$"):
                continue
            if topic_matches_sub(rule.topic, topic):
                if rule.access == 0:
                    return False
                if access & rule.access:
                    return True
        if self.patterns:
            if username is not None and ("+" in username or "#" in username):
                return False
            if "+" in clientid or "#" in clientid:
                return False
        for rule in self.patterns:
            if rule.ucount and username is None:
                continue
            if topic_matches_sub(_substitute(rule.topic, username, clientid), topic):
                if rule.access == 0:
                    return False
                if access & rule.access:
                    return True
        return False


def _substitute(topic: str, username: Optional[str], clientid: str) -> str:
    out, i = [], 0
    while i < len(topic):
        if i < len(topic) - 1 and topic[i] == "%":
            if topic[i + 1] == "c":
                out.append(clientid)
                i += 2
                continue
            if username is not None and topic[i + 1] == "u":
                out.append(username)
                i += 2
                continue
        out.append(topic[i])
        i += 1
    return "".join(out)


def _sub_topic_ok(sub: str) -> bool:
    """mosquitto_sub_topic_check: `+` and `#` only as whole levels, `#` last."""
    if not sub:
        return False
    levels = sub.split("/")
    for i, level in enumerate(levels):
        if ("+" in level or "#" in level) and len(level) != 1:
            return False
        if level == "#" and i != len(levels) - 1:
            return False
    return True


def topic_matches_sub(sub: str, topic: str) -> bool:
    """lib/util_topic.c mosquitto_topic_matches_sub for a valid sub and topic name, by levels."""
    if not sub or not topic:
        return False
    if sub.startswith("$") != topic.startswith("$"):
        return False
    s, t = sub.split("/"), topic.split("/")
    for i, level in enumerate(s):
        if level == "#":
            return True       # `#` also matches the parent level (a/# matches a)
        if i >= len(t):
            return False
        if level != "+" and level != t[i]:
            return False
    return len(s) == len(t)


# --- realistic acl_files ----------------------------------------------------


@dataclass
class Shape:
    """One generated acl_file and the universe to probe it with."""

    text: str
    users: list[str]             # usernames that connect (with and without blocks)
    clientids: dict[str, str]    # username (or "" for anonymous) -> client id
    topics: list[str]            # topic names to publish / read


def realistic_acl(rng: random.Random, n_users: int = 4) -> Shape:
    """An acl_file as operators write them: an anonymous section, user blocks (devices and an
    observer), %u/%c patterns, deny carve-outs at both levels, +/#/$ filters."""
    devices = [f"dev{i}" for i in range(1, n_users + 1)]
    observer = "obs"
    users = devices + [observer, "stranger"]          # "stranger": no block of its own
    clientids = {u: f"{u}-c" for u in users}
    clientids[""] = "anon-c"
    words = ["tele", "cmd", "state", "secret"]

    def leaf(base: str) -> str:
        return rng.choice([f"{base}/{rng.choice(words)}", f"{base}/#", f"{base}/+", f"{base}/+/x", base])

    lines = ["# generated"]
    if rng.random() < 0.7:  # anonymous section
        for _ in range(rng.randint(1, 3)):
            lines.append(f"topic {rng.choice(['read', 'readwrite', 'write', 'deny'])} "
                         f"{rng.choice(['public/#', 'public/news', 'public/+/state', 'public/secret', '$pub/#'])}")
    for name in devices:
        if rng.random() < 0.2:
            continue  # some devices rely on patterns only
        lines.append("")
        lines.append(f"user {name}")
        lines.append(f"topic {rng.choice(['readwrite', 'read', ''])} {rng.choice(['dev', 'fleet'])}/{name}/#"
                     .replace("  ", " "))  # its own subtree, where pattern carve-outs meet it
        for _ in range(rng.randint(0, 3)):
            base = rng.choice([f"fleet/{name}", f"dev/{name}", "public", f"fleet/{rng.choice(devices)}", "$app"])
            access = rng.choice(["read", "write", "readwrite", "readwrite", "deny", ""])
            lines.append(f"topic {access} {leaf(base)}".replace("  ", " "))
    lines += ["", f"user {observer}", rng.choice(["topic read #", "topic read fleet/#", "topic read +/+/tele"])]
    if rng.random() < 0.5:
        lines.append(f"topic deny {rng.choice(['fleet/+/secret', 'dev/#', 'fleet/dev1/#'])}")
    if rng.random() < 0.3:
        lines.append("topic read $app/#")
    if rng.random() < 0.3:  # a second block for one name: Mosquitto merges them
        name = rng.choice(devices)
        lines += [f"user {name}", f"topic {rng.choice(['read', 'deny'])} {leaf('fleet/' + name)}"]
    lines.append(f"pattern deny {rng.choice(['dev/%u/secret', 'fleet/%u/secret', '+/%u/secret', 'fleet/+/secret'])}")
    lines.append(f"pattern {rng.choice(['readwrite', 'read', 'write', ''])} {rng.choice(['dev/%u/#', 'fleet/%u/#'])}"
                 .replace("  ", " "))
    for _ in range(rng.randint(0, 4)):
        template = rng.choice(["dev/%u/#", "dev/%u/secret", "fleet/%u/+", "cmd/%c/#", "fleet/%u/%c",
                               "dev/%u/cmd", "public/%c", "fleet/+/secret", "%u/#", "$app/%u/#"])
        access = rng.choice(["read", "write", "readwrite", "deny", "deny", ""])
        lines.append(f"pattern {access} {template}".replace("  ", " "))
    topics = set()
    for owner in users:
        cid = clientids[owner]
        for base in (f"fleet/{owner}", f"dev/{owner}", f"cmd/{cid}", f"{owner}"):
            topics.update({f"{base}/{w}" for w in words} | {base, f"{base}/x/x"})
        topics.add(f"fleet/{owner}/{cid}")
    topics.update({"public/news", "public/secret", "public/a/state", "public/anon-c", "$app/x", "$pub/x",
                   "other"})
    for line in lines:  # every filter of the file, made concrete for every client
        fields = line.split(" ")
        if fields[0] not in ("topic", "pattern"):
            continue
        for owner in users + [""]:
            topics.add(concrete(fields[-1], owner or "anon", clientids[owner], rng))
    return Shape("\n".join(lines) + "\n", users, clientids, sorted(topics))


def concrete(flt: str, username: str, clientid: str, rng: random.Random) -> str:
    """A topic name the filter matches (for this client, if it is a pattern)."""
    levels = []
    for level in flt.split("/"):
        if level == "#":
            levels += rng.choice([[], ["x"], ["secret", "x"]])
        elif level == "+":
            levels.append(rng.choice([username, "secret", "tele"]))
        else:
            levels.append(level.replace("%u", username).replace("%c", clientid))
    return "/".join(levels) or "x"


def own_topics(shape: Shape, who: str) -> list[str]:
    """The topics that name this client: where its own rules and its patterns meet."""
    marks = (f"/{who}/", f"/{shape.clientids[who]}") if who else ("public", "anon")
    return [t for t in shape.topics if any(m in f"/{t}/" or t.startswith(m) for m in marks)]
