"""Validation: every problem reported with file, line, column and key."""

import pytest

from policyd.engine import PolicyLoadError, parse_text


def problems(text: str):
    with pytest.raises(PolicyLoadError) as exc:
        parse_text(text.encode(), "rules.yaml")
    return [str(p) for p in exc.value.problems]


def test_every_problem_is_reported_with_location():
    got = problems("""\
users:
  D1:
    - topic: a/#/b
      access: rw
    - {topic: x, acces: read}
patterns:
  - topic: foo
    access: read
bogus: 1
""")
    assert got == [
        "rules.yaml:3:14: error: users.D1[0].topic: invalid topic filter 'a/#/b': '#' must be the last level of a filter",
        "rules.yaml:4:15: error: users.D1[0].access: unknown access 'rw' (expected read, write, readwrite, deny)",
        "rules.yaml:5:18: error: users.D1[1].acces: unknown key 'acces' (expected topic, access)",
        "rules.yaml:7:12: error: patterns[0].topic: pattern 'foo' has no %u or %c: it would apply to every "
        "client alike (put it under a user, a group or anonymous instead)",
        "rules.yaml:9:1: error: bogus: unknown key 'bogus' (expected order, superusers, users, groups, certificates, patterns, anonymous, identity, revoked, passwords)",
    ]


def test_syntax_error_has_a_line():
    got = problems("users:\n  D1: [\n")
    assert got[0].startswith("rules.yaml:3:") and "YAML syntax" in got[0]


def test_duplicate_users_are_errors():
    got = problems("users:\n  D1: []\n  D1: []\n")
    assert got == ["rules.yaml:3:3: error: users.D1: duplicate key 'D1'"]


@pytest.mark.parametrize("name", ["a+b", "a/b", "#"])
def test_unsafe_identities_are_refused_in_the_file(name):
    got = problems(f'users:\n  "{name}": []\n')
    assert "can never be a safe topic level" in got[0]


def test_aliases_are_refused():
    got = problems("""\
x: &rules
  - {topic: a, access: read}
""".replace("x:", "anonymous:") + "users:\n  u: *rules\n")
    assert any("aliases" in p for p in got)


def test_template_must_fill_a_level():
    got = problems("patterns:\n  - {topic: a/x%u, access: read}\n")
    assert "must fill a whole topic level" in got[0]


def test_missing_keys():
    got = problems("users:\n  u:\n    - {topic: a}\n")
    assert got == ["rules.yaml:3:7: error: users.u[0]: missing 'access'"]


def test_not_utf8():
    with pytest.raises(PolicyLoadError, match="not valid UTF-8"):
        parse_text(b"users: {\xff: []}", "r.yaml")


def test_valid_file_has_hash_and_warnings():
    spec = parse_text(b"anonymous:\n  - {topic: 'x/%u', access: read}\n", "r.yaml")
    assert len(spec.sha256) == 64
    assert [p.severity for p in spec.warnings] == ["warning"]


@pytest.mark.parametrize("text", [
    "users:\n  u: &r [{topic: a, access: read}]\n  v: *r\n",                  # a list reused
    "users:\n  u:\n    - &m {topic: a, access: read}\n    - *m\n",           # one rule reused
])
def test_aliases_are_refused_on_the_fast_path_too(text):
    assert any("aliases" in p for p in problems(text))


@pytest.mark.parametrize("rule, message", [
    ("{topic: '', access: read}", "empty topic filter"),
    ("{topic: 'a/b', access: reed}", "unknown access 'reed'"),
    ("{access: read, topic: 'a+'}", "'+' and '#' must be a whole level"),
    ("{topic: [a], access: read}", "expected text"),
    ("{topic: a, access: read, x: 1}", "unknown key 'x'"),
    ("{topic: a, topic: b}", "duplicate key 'topic'"),
])
def test_two_key_rules_that_look_plain_are_still_checked(rule, message):
    assert any(message in p for p in problems(f"users:\n  u:\n    - {rule}\n")), message
