"""cache_scope: a returned filter must never make a cached answer disagree with the policy.

Checked by brute force: random small policies and requests, then every topic of a small
universe that the scope matches is decided afresh and must get the same answer.
"""

import itertools

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from policyd.engine import Access, PolicyLoadError, Request, compile_policy, parse_text
from policyd.engine import topics
from policyd.engine import scope as scope_module
from policyd.engine.policy import Identity
from policyd.engine.scope import MORE_SCOPES_MAX, cache_scope, more_scopes

USERS = ["u1", "u2", "admin"]
CLIENTS = ["c1", "c2"]
TOPIC_LEVELS = ["a", "u1", "c1", "", "$x"]
RULE_LEVELS = ["a", "+", "%u", "%c", "", "$x"]
ACCESS_WORDS = ["read", "write", "readwrite", "deny"]

# Every topic name of 1..3 levels over TOPIC_LEVELS ($x only first, as MQTT puts it). The
# empty topic is left out: it is not a topic name, and the shim never matches it to a scope.
UNIVERSE = [t for t in ("/".join(p) for n in (1, 2, 3) for p in itertools.product(TOPIC_LEVELS, repeat=n)
                        if "$x" not in p[1:]) if t]


@st.composite
def rule_filters(draw):
    levels = draw(st.lists(st.sampled_from(RULE_LEVELS), min_size=1, max_size=3))
    if draw(st.booleans()):
        levels.append("#")
    levels = [lv for i, lv in enumerate(levels) if lv != "$x" or i == 0]
    return "/".join(levels) or "#"


rules = st.lists(st.fixed_dictionaries({"topic": rule_filters(), "access": st.sampled_from(ACCESS_WORDS)}),
                 max_size=4)


def yaml_rules(rs, indent):
    pad = " " * indent
    return "".join(f"{pad}- {{topic: {r['topic']!r}, access: {r['access']}}}\n" for r in rs) or f"{pad}[]\n"


@st.composite
def policies(draw):
    text = draw(st.sampled_from(["", "order: mosquitto\n"])) + "superusers: [admin]\nusers:\n"
    for user in ("u1", "u2"):
        text += f"  {user}:\n" + yaml_rules(draw(rules), 4)
    text += "patterns:\n" + yaml_rules(draw(rules), 2)
    text += "anonymous:\n" + yaml_rules(draw(rules), 2)
    try:
        return compile_policy(parse_text(text.encode(), "rules.yaml"))
    except PolicyLoadError:  # e.g. a pattern without %u/%c
        assume(False)


# Weighted towards identities that have rules, so that allow and deny rules meet often.
requests = st.builds(Request, st.sampled_from(["u1", "u1", "u2", None, None, "admin", "u#"]),
                     st.sampled_from(CLIENTS + ["c+"]),
                     st.sampled_from(UNIVERSE), st.sampled_from([Access.READ, Access.WRITE]))


@settings(max_examples=1000, deadline=None)
@given(policies(), requests)
def test_scope_is_never_wrong(policy, request):
    # both orders: with `order: mosquitto` an allow of the client's own rules outranks a pattern
    # deny, so a pattern deny's filter is no scope where the client's own rules allow inside it
    decision = policy.decide(request)
    scope = cache_scope(policy, request, decision)
    if scope is None:
        return
    flt = topics.split(scope)
    assert topics.matches(flt, topics.split(request.topic)), "scope must contain the asked topic"
    for topic in UNIVERSE:
        if topics.matches(flt, topics.split(topic)):
            other = policy.decide(Request(request.username, request.clientid, topic, request.access))
            assert other.allowed == decision.allowed, (scope, topic, decision, other)


SEED = compile_policy(parse_text(b"""
superusers: [admin]
users:
  Device123:
    - {topic: /device/%u/#, access: readwrite}
    - {topic: /device/%u/secret, access: deny}
  Device124:
    - {topic: /device/%u/#, access: readwrite}
patterns:
  - {topic: /device/%u/#, access: readwrite}
""", "rules.yaml"))


def scope_of(user, topic, access=Access.WRITE, policy=SEED):
    req = Request(user, "cid", topic, access)
    return cache_scope(policy, req, policy.decide(req))


def test_device_subtree_is_one_scope():
    assert scope_of("Device124", "/device/Device124/t/1") == "/device/Device124/#"
    assert scope_of("Device999", "/device/Device999/x", Access.READ) == "/device/Device999/#"


def test_a_deny_cutting_into_the_grant_means_no_scope():
    assert scope_of("Device123", "/device/Device123/t") is None


def test_deny_rule_scope_and_superuser():
    assert scope_of("Device123", "/device/Device123/secret") == "/device/Device123/secret"
    assert scope_of("admin", "/x/y") == "#"


def test_default_deny_subscribe_and_hostile_identities_get_no_scope():
    assert scope_of("Device124", "/device/other/t") is None
    assert scope_of("Device124", "/device/Device124/#", Access.SUBSCRIBE) is None
    assert scope_of("a+b", "/device/a+b/t") is None
    assert scope_of(b"\xff", "/device/x/t") is None


MOSQUITTO_ORDER = compile_policy(parse_text(b"""
order: mosquitto
users:
  u1:
    - {topic: a/b, access: readwrite}
    - {topic: x/#, access: readwrite}
patterns:
  - {topic: a/#, access: deny}
  - {topic: x/%u/secret, access: deny}
""", "rules.yaml"))


def test_mosquitto_order_scopes_respect_the_stages():
    # a pattern deny's filter is no scope where the user's own rules allow inside it...
    assert scope_of("u1", "a/c", policy=MOSQUITTO_ORDER) is None
    assert not MOSQUITTO_ORDER.decide(Request("u1", "cid", "a/c", Access.WRITE)).allowed
    assert MOSQUITTO_ORDER.decide(Request("u1", "cid", "a/b", Access.WRITE)).allowed
    # ...and an own allow holds over its whole filter, pattern denies inside it notwithstanding
    assert scope_of("u1", "x/u1/secret", policy=MOSQUITTO_ORDER) == "x/#"
    assert scope_of("u2", "a/c", policy=MOSQUITTO_ORDER) == "a/#"   # no own rules: the deny's filter


@settings(max_examples=1000, deadline=None)
@given(policies(), requests)
def test_scopes_sent_ahead_are_never_wrong(policy, request):
    """Every scope sent ahead is an allow over its whole filter, as the policy decides each topic;
    every SUBSCRIBE sent ahead is the policy's allow for exactly that filter."""
    for access, scope in more_scopes(policy, request):
        if access is Access.SUBSCRIBE:
            assert policy.decide(Request(request.username, request.clientid, scope, access)).allowed, scope
            continue
        assert access in (Access.READ, Access.WRITE)
        flt = topics.split(scope)
        for topic in UNIVERSE:
            if topics.matches(flt, topics.split(topic)):
                other = policy.decide(Request(request.username, request.clientid, topic, access))
                assert other.allowed, (scope, access, topic, other)


# Names only the patterns apply to (u1, u2 and admin have rules of their own), some equal to a
# rule's level, to the probe level, to a stand-in's name or to each other.
STRANGERS = ["d1", "d2", "a", "x", "c1", "policyd-stand-in-u"]
strangers = st.builds(Request, st.sampled_from(STRANGERS), st.sampled_from(["c1", "d1", "d2", "a", "x"]),
                      st.just("a"), st.sampled_from([Access.READ, Access.WRITE, Access.SUBSCRIBE]))


@settings(max_examples=1000, deadline=None)
@given(policies(), st.lists(strangers, min_size=1, max_size=4))
def test_scopes_sent_ahead_from_the_stand_in_are_those_the_probes_find(policy, requests):
    """Several clients of one policy, each checked against probing its own rules afresh."""
    for request in requests:
        ident = Identity.of(request.username, request.clientid)
        probed = scope_module._probed(policy, request, MORE_SCOPES_MAX, ident, policy.stages(ident))
        assert more_scopes(policy, request) == probed, (request, policy.scope_memo)


def test_the_stand_in_is_worked_out_once_and_keeps_whether_the_names_are_equal():
    policy = compile_policy(parse_text(b"""
patterns:
  - {topic: /device/%u/#, access: readwrite}
  - {topic: /device/%c/#, access: deny}
""", "rules.yaml"))
    ahead = [more_scopes(policy, Request(f"Device{i}", f"cid{i}", "t", Access.SUBSCRIBE)) for i in (1, 2)]
    assert ahead == [[(a, "/device/Device1/#") for a in (Access.READ, Access.WRITE, Access.SUBSCRIBE)],
                     [(a, "/device/Device2/#") for a in (Access.READ, Access.WRITE, Access.SUBSCRIBE)]]
    assert more_scopes(policy, Request("Device3", "Device3", "t", Access.SUBSCRIBE)) == []  # its own deny
    assert more_scopes(policy, Request("device", "cid", "t", Access.SUBSCRIBE)) == [
        (a, "/device/device/#") for a in (Access.READ, Access.WRITE, Access.SUBSCRIBE)]  # a rule's level: probed
    assert sorted(k for k in policy.scope_memo if k != "stand-ins") == [(False, MORE_SCOPES_MAX),
                                                                         (True, MORE_SCOPES_MAX)]


def test_scopes_sent_ahead_for_the_seed():
    def ahead(user):
        return sorted((a.name, s) for a, s in more_scopes(SEED, Request(user, "cid", "/device/x/#", Access.SUBSCRIBE)))
    def whole(user):
        return [(a, f"/device/{user}/#") for a in ("READ", "SUBSCRIBE", "WRITE")]
    assert ahead("Device999") == whole("Device999")
    assert ahead("Device124") == whole("Device124")
    # a deny cuts into its grant: no scope provable, yet subscribing to the rule's filter is allowed
    # (each delivery is checked)
    assert ahead("Device123") == [("SUBSCRIBE", "/device/Device123/#")]
    assert ahead("admin") == [("READ", "#"), ("WRITE", "#")]
    assert ahead("a+b") == [] and ahead(None) == []


def test_scopes_sent_ahead_are_bounded():
    many = "users:\n  u1:\n" + "".join(f"    - {{topic: t{i}/#, access: readwrite}}\n" for i in range(500))
    policy = compile_policy(parse_text(many.encode(), "rules.yaml"))
    found = more_scopes(policy, Request("u1", "cid", "t0/x", Access.WRITE))
    assert len(found) == 24 and len({s for _, s in found}) == 8
    assert sorted({a for a, _ in found}) == [Access.READ, Access.WRITE, Access.SUBSCRIBE]
