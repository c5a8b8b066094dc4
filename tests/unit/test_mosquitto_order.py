"""`order: mosquitto`: Mosquitto 2.0's acl_file order, chosen in the rules file."""

import pytest

from policyd.engine import Access, PolicyLoadError, Request, compile_policy, parse_text

R, W, S = Access.READ, Access.WRITE, Access.SUBSCRIBE

RULES = """
order: mosquitto
users:
  obs:
    - {topic: '#', access: read}
  D1:
    - {topic: dev/D1/#, access: read}
    - {topic: dev/D1/locked, access: deny}
patterns:
  - {topic: dev/%u/secret, access: deny}
  - {topic: dev/%u/#, access: readwrite}
  - {topic: public/#, access: read}
  - {topic: cmd/%c, access: read}
anonymous:
  - {topic: public/private, access: deny}
"""


def decide(text, user, topic, access, clientid="cid"):
    return compile_policy(parse_text(text.encode(), "rules.yaml")).decide(Request(user, clientid, topic, access))


@pytest.mark.parametrize("user, topic, access, clientid, allowed", [
    ("obs", "dev/obs/secret", R, "cid", True),      # own `#` decides before the pattern deny
    ("D1", "dev/D1/secret", R, "cid", True),        # own allow before the pattern deny
    ("D1", "dev/D1/locked", R, "cid", False),       # own deny first within its own rules
    ("D1", "dev/D1/x", W, "cid", True),             # own read does not grant write: patterns do
    ("D2", "dev/D2/secret", R, "cid", False),       # no block: patterns, denies first
    (None, "public/news", R, "anon", True),         # patterns without %u apply to anonymous clients
    (None, "public/private", R, "anon", False),     # after the anonymous rules, which deny first
    (None, "dev/%u/x", R, "anon", False),           # a %u pattern is skipped for them
    (None, "cmd/anon", R, "anon", True),            # %c is the client id
    ("D2", "public/news", R, "c+1", False),         # a wildcard in the client id: no patterns at all
    ("u#", "public/news", R, "cid", False),         # nor in the username
    ("obs", "dev/obs/secret", R, "c+1", True),      # own rules still decide for such clients
    ("D2", "anything/#", S, "cid", True),           # SUBSCRIBE granted; READ decides each message
    ("D2", "a/#/b", S, "cid", False),               # a filter MQTT refuses is still refused
])
def test_mosquitto_order_decisions(user, topic, access, clientid, allowed):
    assert decide(RULES, user, topic, access, clientid).allowed is allowed


def test_default_order_is_deny_first():
    text = RULES.replace("order: mosquitto\n", "").replace("  - {topic: public/#, access: read}\n", "")
    assert not decide(text, "obs", "dev/obs/secret", R).allowed
    assert not decide(text, "D1", "dev/D1/secret", R).allowed
    assert not decide(text, "D2", "anything/#", S).allowed
    assert decide(text.replace("users:", "order: deny-first\nusers:"), "D1", "dev/D1/x", R).allowed


def test_unknown_order_and_template_free_patterns():
    with pytest.raises(PolicyLoadError) as exc:
        parse_text(b"order: acl\nusers: {}\n", "rules.yaml")
    assert "rules.yaml:1:8: error: order: unknown order 'acl' (expected deny-first, mosquitto)" in str(
        exc.value.problems[0])
    with pytest.raises(PolicyLoadError):
        parse_text(b"users: {}\npatterns:\n  - {topic: all/#, access: read}\n", "rules.yaml")
    # Mosquitto applies a pattern without a template to every client: allowed in its order
    parse_text(b"users: {}\npatterns:\n  - {topic: all/#, access: read}\norder: mosquitto\n", "rules.yaml")


def test_shadow_warnings_follow_the_order():
    text = "users:\n  D1:\n    - {topic: dev/D1/x, access: read}\npatterns:\n  - {topic: dev/%u/#, access: deny}\n"
    assert any("never takes effect" in str(w) for w in parse_text(text.encode(), "r.yaml").warnings)
    mosq = parse_text(("order: mosquitto\n" + text).encode(), "r.yaml")
    assert not any("never takes effect" in str(w) for w in mosq.warnings)


def test_explain_shows_the_stages_rules():
    policy = compile_policy(parse_text(RULES.encode(), "rules.yaml"))
    decision = policy.explain(Request("D1", "cid", "dev/D1/secret", R))
    assert decision.allowed and [s.outcome for s in decision.trace] == ["no-match", "allow"]
