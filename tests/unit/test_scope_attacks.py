"""Scopes sent ahead, attacked: certificates entries, attributes, and the stand-in identity.

Each scope sent ahead must be an allow over its whole filter as the policy decides every topic of
a small universe for the same client (same attributes); each SUBSCRIBE sent ahead the policy's allow
for exactly that filter; and the stand-in's scopes must be those probing the client afresh finds.
"""

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from policyd.engine import Access, PolicyLoadError, Request, compile_policy, parse_text
from policyd.engine import topics
from policyd.engine import scope as scope_module
from policyd.engine.policy import Identity
from policyd.engine.scope import MORE_SCOPES_MAX, more_scopes
from test_scope import UNIVERSE, rules, yaml_rules

ATTRIBUTES = [{}, {"OU": ("ops",)}, {"OU": ("guests",)}, {"OU": ("ops", "guests")}]
NAMES = ["u1", "d1", "d2", "a", "x", "c1", "ops"]


@st.composite
def policies(draw):
    text = draw(st.sampled_from(["", "order: mosquitto\n"])) + "superusers: [admin]\nusers:\n"
    text += "  u1:\n" + yaml_rules(draw(rules), 4)
    text += "certificates:\n"
    for name in ("ops", "guests"):
        text += f"  {name}:\n    match: {{OU: {name}}}\n    rules:\n" + yaml_rules(draw(rules), 6)
    text += "patterns:\n" + yaml_rules(draw(rules), 2)
    try:
        return compile_policy(parse_text(text.encode(), "rules.yaml"))
    except PolicyLoadError:
        assume(False)


clients = st.builds(Request, st.sampled_from(NAMES), st.sampled_from(["c1", "d1", "a", "x", "ops"]),
                    st.just("a"), st.just(Access.SUBSCRIBE), st.sampled_from(ATTRIBUTES))


@settings(max_examples=1500, deadline=None)
@given(policies(), st.lists(clients, min_size=1, max_size=5))
def test_scopes_sent_ahead_with_certificates_are_never_wrong(policy, requests):
    for request in requests:
        ident = Identity.of(request.username, request.clientid)
        stages = policy.stages(ident, request.attributes)
        found = more_scopes(policy, request)
        assert found == scope_module._probed(policy, request, MORE_SCOPES_MAX, ident, stages), request
        for access, scope in found:
            if access is Access.SUBSCRIBE:
                asked = Request(request.username, request.clientid, scope, access, request.attributes)
                assert policy.decide(asked).allowed, (request, scope)
                continue
            flt = topics.split(scope)
            for topic in UNIVERSE:
                if topics.matches(flt, topics.split(topic)):
                    asked = Request(request.username, request.clientid, topic, access, request.attributes)
                    assert policy.decide(asked).allowed, (request, scope, access, topic)


def test_a_retirement_racing_the_stand_in_memo_leaves_nothing_in_it():
    """retire() sets `retired`, then clears the memo; a store that read `retired` just before
    must not leave an entry behind, which a retired policy would answer with, no decision made."""
    policy = compile_policy(parse_text(b"patterns:\n  - {topic: /device/%u/#, access: readwrite}\n",
                                       "rules.yaml"))

    class RetiredMeanwhile(dict):
        def __setitem__(self, key, value):
            if key != "stand-ins":
                for _ in policy.retire():
                    pass
            super().__setitem__(key, value)

    object.__setattr__(policy, "scope_memo", RetiredMeanwhile())
    more_scopes(policy, Request("d1", "c1", "a", Access.SUBSCRIBE))
    assert policy.retired
    assert [k for k in policy.scope_memo if k != "stand-ins"] == []
    assert more_scopes(policy, Request("d2", "c2", "a", Access.SUBSCRIBE)) == []


EXOTIC = ["%u", "%c", "%", "%%u", "x", "a", "é", "a b", "policyd-stand-in-c", "policyd-stand-in-u1", "d" * 64,
          "\u00e9" * 128, "ops", "c1"]
PATTERN_LEVELS = ["a", "+", "%u", "%c", "%%u", "%%c", "x", "", "policyd-stand-in-c"]


@st.composite
def exotic_policies(draw):
    text = draw(st.sampled_from(["", "order: mosquitto\n"])) + "patterns:\n"
    for _ in range(draw(st.integers(1, 4))):
        levels = draw(st.lists(st.sampled_from(PATTERN_LEVELS), min_size=1, max_size=3))
        if draw(st.booleans()):
            levels.append("#")
        topic = "/".join(levels)
        text += f"  - {{topic: {topic!r}, access: {draw(st.sampled_from(['read', 'write', 'readwrite', 'deny']))}}}\n"
    try:
        return compile_policy(parse_text(text.encode(), "rules.yaml"))
    except PolicyLoadError:
        assume(False)


@settings(max_examples=1500, deadline=None)
@given(exotic_policies(), st.lists(st.tuples(st.sampled_from(EXOTIC), st.sampled_from(EXOTIC)), min_size=1, max_size=5))
def test_the_stand_in_renames_exotic_names_as_probing_them_finds(policy, names):
    for username, clientid in names:
        request = Request(username, clientid, "a", Access.SUBSCRIBE)
        ident = Identity.of(username, clientid)
        stages = policy.stages(ident)
        assert more_scopes(policy, request) == scope_module._probed(policy, request, MORE_SCOPES_MAX, ident,
                                                                    stages), (username, clientid)


def test_threads_filling_the_stand_in_memo_at_once_each_get_their_own_scopes():
    """gRPC's threads fill one fresh policy's memo at the same time, for different clients."""
    import sys
    import threading

    text = b"""patterns:
  - {topic: /device/%u/#, access: readwrite}
  - {topic: /device/%c/secret, access: deny}
  - {topic: fleet/%c/%u, access: read}
"""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(20):
            policy = compile_policy(parse_text(text, "rules.yaml"))
            names = [(f"d{i}", f"c{i}" if i % 2 else f"d{i}") for i in range(16)]
            found: dict = {}
            barrier = threading.Barrier(len(names))

            def one(username, clientid):
                barrier.wait()
                found[(username, clientid)] = more_scopes(policy, Request(username, clientid, "a", Access.WRITE))

            threads = [threading.Thread(target=one, args=n) for n in names]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for username, clientid in names:
                ident = Identity.of(username, clientid)
                request = Request(username, clientid, "a", Access.WRITE)
                assert found[(username, clientid)] == scope_module._probed(
                    policy, request, MORE_SCOPES_MAX, ident, policy.stages(ident)), (username, clientid)
    finally:
        sys.setswitchinterval(old)
