"""The rule engine's decisions, one rule of docs/rules.md at a time."""

import pytest

from policyd.engine import Access, PolicyLoadError, Request, compile_policy, parse_text

R, W, S, U = Access.READ, Access.WRITE, Access.SUBSCRIBE, Access.UNSUBSCRIBE

SEED = b"""
superusers: [admin]
users:
  Device123:
    - topic: /device/%u/#
      access: readwrite
patterns:
  - topic: /device/%u/#
    access: readwrite
anonymous:
  - topic: public/#
    access: read
"""


def policy(text: bytes = SEED):
    return compile_policy(parse_text(text, "rules.yaml"))


def allowed(p, user, topic, access, clientid="cid"):
    return p.decide(Request(user, clientid, topic, access)).allowed


def test_seed_user_rule_expands_percent_u():
    # Mosquitto expands %u only in `pattern` lines; we expand it in user rules too (the seed's intent).
    p = policy(b"users:\n  Device123:\n    - {topic: /device/%u/#, access: readwrite}\n")
    assert allowed(p, "Device123", "/device/Device123/t", W)
    assert not allowed(p, "Device999", "/device/Device999/t", W)


@pytest.mark.parametrize("user, topic, access, expected", [
    ("Device123", "/device/Device123/t", W, True),
    ("Device123", "/device/Device123/t", R, True),
    ("Device123", "/device/Device123", W, True),           # a/# matches a
    ("Device999", "/device/Device123/t", W, False),
    ("Device999", "/device/Device123/t", R, False),
    ("Device999", "/device/Device999/a/b/c", W, True),
    ("Device999", "/device/Device999x/t", W, False),
    ("admin", "/anything/at/all", W, True),
    ("admin", "#", S, True),
    (None, "public/news", R, True),
    (None, "public/news", W, False),
    (None, "/device/x/t", R, False),
    ("Device999", "public/news", R, False),               # anonymous rules are for anonymous clients only
])
def test_seed_decisions(user, topic, access, expected):
    assert allowed(policy(), user, topic, access) is expected


def test_unsubscribe_is_always_allowed():
    assert allowed(policy(b"users: {}\n"), "nobody", "x/y", U)


def test_empty_policy_denies_everything():
    p = policy(b"users: {}\n")
    for access in (R, W, S):
        assert not allowed(p, "x", "x", access)


@pytest.mark.parametrize("bad", [b"", b"   \n", b"# only a comment\n"])
def test_empty_file_is_an_error(bad):
    with pytest.raises(PolicyLoadError, match="empty"):
        policy(bad)


def test_deny_wins_over_allow_in_any_rule_set():
    p = policy(b"""
users:
  d1:
    - {topic: "/device/d1/#", access: readwrite}
patterns:
  - {topic: "/device/%u/secret", access: deny}
""")
    assert allowed(p, "d1", "/device/d1/t", W)
    assert not allowed(p, "d1", "/device/d1/secret", W)
    assert not allowed(p, "d1", "/device/d1/secret", R)


def test_access_words():
    p = policy(b"""
users:
  u:
    - {topic: r/#, access: read}
    - {topic: w/#, access: write}
""")
    assert allowed(p, "u", "r/x", R) and allowed(p, "u", "r/#", S) and not allowed(p, "u", "r/x", W)
    assert allowed(p, "u", "w/x", W) and not allowed(p, "u", "w/x", R) and not allowed(p, "u", "w/#", S)


@pytest.mark.parametrize("ident", ["a+b", "a#", "a/b", "", "a\x00b", b"\xff\xfe"])
def test_unsafe_identity_never_matches_a_template(ident):
    p = policy()
    # Whatever such a name would expand to, it gets nothing through %u...
    for topic in ("/device/a/b/t", "/device/x/t", "/device/a+b/t".replace("+", "_")):
        assert not allowed(p, ident, topic, W)
        assert not allowed(p, ident, topic, R)
    assert not allowed(p, ident, "/device/#", S)


def test_unsafe_client_id_never_matches_percent_c():
    p = policy(b"patterns:\n  - {topic: clients/%c/#, access: readwrite}\n")
    assert allowed(p, "u", "clients/c1/x", W, clientid="c1")
    assert not allowed(p, "u", "clients/a/b/x", W, clientid="a/b")
    assert not allowed(p, "u", "clients/x", S, clientid="#")


def test_deny_rule_with_unusable_template_denies():
    p = policy(b"""
users:
  u:
    - {topic: "data/#", access: readwrite}
patterns:
  - {topic: "data/%c/private", access: deny}
""")
    assert allowed(p, "u", "data/x", W, clientid="ok")
    assert not allowed(p, "u", "data/x", W, clientid="bad/id")


def test_dollar_topics_need_dollar_rules():
    p = policy(b"""
users:
  u:
    - {topic: "#", access: read}
    - {topic: "$SYS/broker/#", access: read}
""")
    assert allowed(p, "u", "a/b", R)
    assert allowed(p, "u", "$SYS/broker/uptime", R)
    assert not allowed(p, "u", "$SYS/other", R)
    assert not allowed(p, "u", "$SYS/#", S)


def test_subscribe_needs_a_rule_covering_the_whole_filter():
    p = policy(b"""
users:
  u:
    - {topic: "a/+/c", access: read}
    - {topic: "a/b/secret", access: deny}
    - {topic: "x/#", access: read}
    - {topic: "x/y/#", access: deny}
""")
    assert allowed(p, "u", "a/+/c", S)
    assert allowed(p, "u", "a/b/c", S)
    assert not allowed(p, "u", "a/#", S)
    assert not allowed(p, "u", "a/+/+", S)
    # A deny cutting into the filter is enforced per message at delivery...
    assert allowed(p, "u", "x/#", S)
    assert not allowed(p, "u", "x/y/z", R)
    # ...one covering it entirely refuses the subscription.
    assert not allowed(p, "u", "x/y/#", S)


def test_shared_subscription_is_checked_without_its_prefix():
    p = policy()
    assert not allowed(p, "Device1", "$share/g1//device/Device2/#", S)
    assert allowed(p, "Device1", "$share/g1//device/Device1/#", S)


def test_invalid_topics_are_denied():
    p = policy()
    assert not allowed(p, "admin", "a/+", W)       # wildcard in a topic name
    assert not allowed(p, "admin", "a/#/b", S)     # bad filter, even for a superuser
    assert not allowed(p, "admin", b"\xff", W)


def test_groups_apply_to_members_only():
    p = policy(b"""
groups:
  sensors:
    members: [s1, s2]
    rules:
      - {topic: "telemetry/#", access: write}
""")
    assert allowed(p, "s1", "telemetry/x", W) and allowed(p, "s2", "telemetry/x", W)
    assert not allowed(p, "s3", "telemetry/x", W)


def test_explain_lists_every_rule_considered():
    p = policy()
    d = p.explain(Request("Device999", "c", "/device/Device123/t", W))
    assert not d.allowed and d.reason.startswith("default-deny")
    assert [s.outcome for s in d.trace] == ["no-match"]
    d = p.explain(Request("Device123", "c", "/device/Device123/t", W))
    assert d.allowed and "users.Device123[0]" in str(d.rule)


def test_compiled_policy_carries_hash_and_counts():
    p = policy()
    assert len(p.source_sha256) == 64
    assert p.rule_count == 3
    assert p.with_generation(7).generation == 7 and p.generation == 0
