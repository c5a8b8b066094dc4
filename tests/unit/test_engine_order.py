"""Property: the engine's decisions equal a deliberately simple reference of docs/rules.md.

The reference below is written from the documented decision order, with its
own naive topic matching and a brute-force "covers" (every topic of a small
universe that the filter matches must match the rule); it shares no code with
policyd.engine beyond the request vocabulary.
"""

import functools
import itertools

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.engine import Access, Request, compile_policy, parse_text

from mqtt_reference import ref_matches

R, W, S, U = Access.READ, Access.WRITE, Access.SUBSCRIBE, Access.UNSUBSCRIBE

# --- the reference ----------------------------------------------------------

GRANTS = {"read": {R, S}, "write": {W}, "readwrite": {R, W, S}, "deny": set()}


def universe(levels: set, depth: int):
    """Every topic up to `depth` levels over `levels`, plus "zz" (in no rule: a wildcard's witness)."""
    alphabet = sorted(levels | {"zz"})
    for n in range(1, depth + 1):
        for combo in itertools.product(alphabet, repeat=n):
            yield "/".join(combo)
            yield "$zz/" + "/".join(combo)


@functools.lru_cache(maxsize=None)
def ref_covers(rule: str, flt: str) -> bool:
    """Every topic the filter can match (in a universe big enough to show a difference)."""
    levels = set(rule.split("/") + flt.split("/")) - {"+", "#"}
    depth = max(rule.count("/"), flt.count("/")) + 2
    return all(ref_matches(rule, t) for t in universe(levels, depth) if ref_matches(flt, t))


def safe(value) -> bool:
    return isinstance(value, str) and value != "" and not any(c in value for c in "+#/\x00")


def expand(topic: str, username, clientid):
    out = []
    for level in topic.split("/"):
        if level in ("%u", "%c"):
            value = username if level == "%u" else clientid
            if not safe(value):
                return None
            out.append(value)
        else:
            out.append(level)
    return "/".join(out)


def ref_decide(doc: dict, username, clientid, topic: str, access: Access, attributes=None) -> bool:
    if access is U:
        return True                                             # 1. unsubscribe
    if username is not None and safe(username) and username in doc.get("superusers", []):
        return True                                             # 3. superuser
    if username is None:                                        # 4. gather
        rules = doc.get("anonymous", [])
    else:
        rules = list(doc.get("users", {}).get(username, []))
        for group in doc.get("groups", {}).values():
            if username in group["members"]:
                rules += group["rules"]
        for entry in doc.get("certificates", {}).values():  # every key: one of its values
            if all(set(values) & set((attributes or {}).get(key, ())) for key, values in entry["match"].items()):
                rules += entry["rules"]
        rules += doc.get("patterns", [])
    for rule in rules:                                          # 5. any deny
        if rule["access"] != "deny":
            continue
        flt = expand(rule["topic"], username, clientid)
        if flt is None:
            return False
        if (ref_covers(flt, topic) if access is S else ref_matches(flt, topic)):
            return False
    for rule in rules:                                          # 6. an allow granting it
        if access not in GRANTS[rule["access"]]:
            continue
        flt = expand(rule["topic"], username, clientid)
        if flt is not None and (ref_covers(flt, topic) if access is S else ref_matches(flt, topic)):
            return True
    return False                                                # 7. default deny


# --- generated policies and requests -----------------------------------------

RULE_LEVEL = st.sampled_from(["a", "b", "+", "%u", "%c", "$s"])
TOPIC_LEVEL = st.sampled_from(["a", "b", "zz", "u1", "c1", "$s"])
FILTER_LEVEL = st.sampled_from(["a", "b", "u1", "+"])


@st.composite
def rule(draw, template=False):
    levels = draw(st.lists(RULE_LEVEL, min_size=1, max_size=3))
    if template and not any(lv in ("%u", "%c") for lv in levels):
        levels[draw(st.integers(0, len(levels) - 1))] = draw(st.sampled_from(["%u", "%c"]))
    if draw(st.booleans()):
        levels.append("#")
    return {"topic": "/".join(levels), "access": draw(st.sampled_from(["read", "write", "readwrite", "deny"]))}


@st.composite
def policies(draw):
    rules = lambda **kw: st.lists(rule(**kw), max_size=3)
    doc = {
        "superusers": draw(st.lists(st.sampled_from(["admin", "u2"]), max_size=1, unique=True)),
        "users": draw(st.dictionaries(st.sampled_from(["u1", "u2", "u3"]), rules(), max_size=2)),
        "groups": {"g": {"members": draw(st.lists(st.sampled_from(["u1", "u3"]), unique=True)),
                         "rules": draw(rules())}},
        "certificates": {"c": {"match": draw(st.sampled_from([{"OU": ["x"]}, {"OU": ["x", "y"], "O": ["o"]}])),
                               "rules": draw(rules())}},
        "patterns": draw(rules(template=True)),
        "anonymous": draw(rules()),
    }
    return doc


@st.composite
def topics_for(draw, access):
    if access is S:
        levels = draw(st.lists(FILTER_LEVEL, min_size=1, max_size=3))
        if draw(st.booleans()):
            levels.append("#")
        if draw(st.booleans()):
            levels[0] = "$s"
        return "/".join(levels)
    return "/".join(draw(st.lists(TOPIC_LEVEL, min_size=1, max_size=4)))


USERNAMES = ["u1", "u2", "u3", "admin", None, "a/b", "+", ""]  # the last three are hostile
CLIENTIDS = ["c1", "u1", "#", "x/y"]
ATTRIBUTES = [{}, {"OU": ("x",)}, {"OU": ("y", "z"), "O": ("o",)}]


@settings(max_examples=250, deadline=None)
@given(doc=policies(), names=st.lists(topics_for(R), min_size=1, max_size=4),
       filters=st.lists(topics_for(S), min_size=1, max_size=3))
def test_engine_decides_like_the_documented_reference(doc, names, filters):
    # every identity x client id x attributes x access on the drawn topics: many decisions per policy
    policy = compile_policy(parse_text(yaml.safe_dump(doc).encode(), "rules.yaml"))
    for username, clientid, attributes in itertools.product(USERNAMES, CLIENTIDS, ATTRIBUTES):
        for access, topic in [(a, t) for a in (R, W, U) for t in names] + [(S, f) for f in filters]:
            got = policy.decide(Request(username, clientid, topic, access, attributes)).allowed
            want = ref_decide(doc, username, clientid, topic, access, attributes)
            assert got == want, (username, clientid, attributes, topic, access)


def test_reference_covers_agrees_with_the_docs_examples():
    # the reference itself, on docs/rules.md's own examples
    assert ref_covers("/device/Device123/#", "/device/Device123/#")
    assert not ref_covers("/device/Device123/#", "/device/#")
    assert not ref_covers("a/+", "a/#")
    assert not ref_covers("#", "$s/#") and ref_covers("$s/#", "$s/a/+")
