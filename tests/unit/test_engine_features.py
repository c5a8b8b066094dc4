"""Certificate-attribute rules, the %% escape and shadowed-rule warnings."""

import pytest

from policyd.engine import Access, PolicyLoadError, Request, compile_policy, parse_text

R, W, S = Access.READ, Access.WRITE, Access.SUBSCRIBE

CERTS = b"""
users:
  D1:
    - {topic: own/%u, access: write}
certificates:
  sensors:
    match: {OU: [sensors, probes], O: Acme}
    rules:
      - {topic: sensors/%u/#, access: write}
      - {topic: sensors/%u/calibration, access: deny}
  acme:
    match: {O: [Acme]}
    rules:
      - {topic: acme/news, access: read}
patterns:
  - {topic: dev/%u/#, access: readwrite}
"""


def decide(policy, user, topic, access, attributes=None, clientid="cid"):
    return policy.decide(Request(user, clientid, topic, access, attributes or {}))


def test_certificate_rules_apply_when_every_attribute_matches():
    p = compile_policy(parse_text(CERTS))
    acme_sensor = {"OU": ("sensors",), "O": ("Acme",)}
    assert decide(p, "D1", "sensors/D1/t", W, acme_sensor).allowed
    assert decide(p, "D9", "sensors/D9/t", W, {"OU": ("probes", "x"), "O": ("Acme",)}).allowed
    assert not decide(p, "D1", "sensors/D1/t", W, {"OU": ("sensors",), "O": ("Other",)}).allowed
    assert not decide(p, "D1", "sensors/D1/t", W, {"OU": ("sensors",)}).allowed  # O missing
    assert not decide(p, "D1", "sensors/D1/t", W).allowed                          # no attributes sent
    assert decide(p, "D1", "acme/news", R, acme_sensor).allowed                    # two entries at once
    assert decide(p, "D1", "own/D1", W, acme_sensor).allowed                       # with own rules


def test_certificate_deny_wins_and_names_its_rule():
    p = compile_policy(parse_text(CERTS))
    d = decide(p, "D1", "sensors/D1/calibration", W, {"OU": ("sensors",), "O": ("Acme",)})
    assert not d.allowed and d.reason == "deny-rule" and "certificates.sensors.rules[1]" in str(d.rule)


def test_certificate_rules_are_not_for_anonymous_clients():
    p = compile_policy(parse_text(CERTS))
    assert not decide(p, None, "acme/news", R, {"O": ("Acme",)}).allowed


def test_explain_lists_certificate_rules():
    p = compile_policy(parse_text(CERTS))
    d = p.explain(Request("D1", "c", "acme/news", R, {"O": ("Acme",)}))
    assert d.allowed and any("certificates.acme" in str(step) for step in d.trace)


@pytest.mark.parametrize("text, message", [
    ("certificates:\n  x:\n    rules: []\n", "needs a non-empty `match`"),
    ("certificates:\n  x:\n    match: {ou: a}\n    rules: []\n", "unknown certificate attribute 'ou'"),
    ("certificates:\n  x:\n    match: {OU: []}\n    rules: []\n", "at least one accepted value"),
    ("certificates:\n  x:\n    match: {OU: a}\n    rule: []\n", "unknown key 'rule'"),
])
def test_certificate_section_errors_are_located(text, message):
    with pytest.raises(PolicyLoadError) as exc:
        parse_text(text.encode(), "rules.yaml")
    assert any(message in str(p) and str(p).startswith("rules.yaml:") for p in exc.value.problems)


def test_percent_percent_is_a_literal_percent():
    p = compile_policy(parse_text(b"users:\n  D1:\n    - {topic: a/%%u/100%%, access: write}\n"))
    assert decide(p, "D1", "a/%u/100%", W).allowed
    assert not decide(p, "D1", "a/D1/100%", W).allowed
    p = compile_policy(parse_text(b"users:\n  D1:\n    - {topic: a/50%/x, access: write}\n"))
    assert decide(p, "D1", "a/50%/x", W).allowed  # a lone % stays literal


def test_partial_template_is_still_refused():
    with pytest.raises(PolicyLoadError) as exc:
        parse_text(b"users:\n  D1:\n    - {topic: a/x%u, access: write}\n", "rules.yaml")
    assert "must fill a whole topic level" in str(exc.value)


def warnings(text):
    return [str(w) for w in parse_text(text.encode(), "rules.yaml").warnings]


def test_allow_covered_by_a_deny_of_the_same_scope_warns_with_both_locations():
    got = warnings("""\
users:
  D1:
    - {topic: dev/D1/secret/x, access: read}
    - {topic: dev/D1/open, access: read}
patterns:
  - {topic: dev/%u/secret/#, access: deny}
  - {topic: dev/%u/+/x, access: read}
  - {topic: dev/%u/+, access: deny}
""")
    assert len(got) == 2
    assert any(w.startswith("rules.yaml:3:7: warning: users.D1[0]: never takes effect for D1: the deny rule "
                            "at rules.yaml:6 (dev/%u/secret/#)") for w in got)
    assert any(w.startswith("rules.yaml:4:7: warning: users.D1[1]: never takes effect for D1") for w in got)
    assert not any("patterns[1]" in w for w in got)  # dev/%u/+ does not cover dev/%u/+/x


def test_partial_overlap_or_other_identity_does_not_warn():
    assert warnings("""\
users:
  D1:
    - {topic: dev/#, access: read}
    - {topic: dev/D2/x, access: read}
    - {topic: c/%c, access: read}
    - {topic: c/+/x, access: deny}
patterns:
  - {topic: dev/%u/secret, access: deny}
""") == []


def test_group_and_anonymous_shadowing_warn():
    got = warnings("""\
groups:
  g:
    members: [D1]
    rules:
      - {topic: x/%c, access: read}
      - {topic: x/+, access: deny}
anonymous:
  - {topic: p/q, access: read}
  - {topic: p/#, access: deny}
""")
    assert any("groups.g.rules[0]: never takes effect for the members of g" in w for w in got)
    assert any("anonymous[0]: never takes effect" in w for w in got)


def test_validate_prints_the_shadow_warning(tmp_path, capsys):
    from policyd.cli import main

    rules = tmp_path / "r.yaml"
    rules.write_text("users:\n  D1:\n    - {topic: a, access: read}\n    - {topic: '#', access: deny}\n")
    assert main(["validate", str(rules)]) == 0  # a warning is not an error
    assert f"{rules}:3:7: warning: users.D1[0]: never takes effect for D1" in capsys.readouterr().err


def test_shadowing_through_a_template_in_the_first_level_is_found():
    got = warnings("users:\n  D1:\n    - {topic: '%u/x', access: read}\n    - {topic: 'D1/#', access: deny}\n")
    assert len(got) == 1 and "users.D1[0]: never takes effect for D1" in got[0]


def test_cache_scope_respects_certificate_denies():
    # an allow's cache scope must not reach over a certificates entry's deny for this client
    from policyd.engine.scope import cache_scope

    p = compile_policy(parse_text(CERTS))
    req = Request("D1", "c", "dev/D1/x", W, {"OU": ("sensors",), "O": ("Acme",)})
    assert cache_scope(p, req, p.decide(req)) == "dev/D1/#"
    p = compile_policy(parse_text(CERTS.replace(b"sensors/%u/calibration", b"dev/%u/locked")))
    assert cache_scope(p, req, p.decide(req)) is None


def test_shadowing_by_a_pattern_deny_through_the_users_own_template_is_found():
    got = warnings("users:\n  D1:\n    - {topic: '%u/x/%c', access: read}\n"
                   "patterns:\n  - {topic: 'D1/+/%c', access: deny}\n")
    assert len(got) == 1 and "users.D1[0]: never takes effect for D1" in got[0]


def test_check_command_takes_certificate_attributes(tmp_path, capsys):
    from policyd.cli import main

    rules = tmp_path / "r.yaml"
    rules.write_bytes(CERTS)
    base = ["check", "--rules", str(rules), "--username", "D1", "--topic", "sensors/D1/t", "--access", "write"]
    assert main(base) == 1
    assert main(base + ["--attribute", "OU=sensors", "--attribute", "O=Acme"]) == 0
    assert "certificates.sensors.rules[0]" in capsys.readouterr().out
    assert main(base + ["--attribute", "OU"]) == 2
