"""`policyd test`: expected decisions run against a rules file (exit 0 / 1 / 2)."""

import pytest

from policyd.cli import main
from policyd.engine import Access, PolicyLoadError
from policyd.engine.policy_tests import parse_tests

RULES = """\
users:
  Device123:
    - {topic: /device/%u/#, access: readwrite}
    - {topic: /device/%u/secret, access: deny}
certificates:
  sensors:
    match: {OU: sensors}
    rules:
      - {topic: sensors/%u, access: write}
anonymous:
  - {topic: public/#, access: read}
"""


@pytest.fixture
def files(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)

    def write(text):
        tests = tmp_path / "tests.yaml"
        tests.write_text(text)
        return ["test", str(tests), "--rules", str(rules)]

    return write


def test_all_pass_exit_0(files, capsys):
    args = files("""\
- {username: Device123, topic: /device/Device123/t, access: write, expect: allow}
- {username: Device123, topic: /device/Device123/secret, access: read, expect: deny}
- {username: null, topic: public/news, access: subscribe, expect: allow}
- {topic: public/news, access: write, expect: deny}
- {username: D9, topic: sensors/D9, access: write, expect: allow, attributes: {OU: [sensors]}}
""")
    assert main(args) == 0
    assert "5 passed, 0 failed" in capsys.readouterr().out


def test_a_failure_exits_1_and_names_the_deciding_rule(files, capsys):
    args = files("""\
- {username: Device123, topic: /device/Device123/t, access: write, expect: allow}
- name: secret must be readable
  username: Device123
  clientid: c7
  topic: /device/Device123/secret
  access: read
  expect: allow
""")
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "1 passed, 1 failed" in out
    fail = next(line for line in out.splitlines() if line.startswith("FAIL"))
    assert "tests.yaml:2:3: secret must be readable: username='Device123' clientid='c7'" in fail
    assert "expected allow, got deny: deny-rule" in fail and "users.Device123[1]" in fail


def test_invalid_test_file_exits_2_with_located_errors(files, capsys):
    args = files("- {username: D1, topic: a, access: publish, expect: yes, extra: 1}\n- {topic: a}\n")
    assert main(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert any(":1:36: error: [0].access: unknown access 'publish'" in e for e in err)
    assert any(":1:53: error: [0].expect: expect must be allow or deny" in e for e in err)
    assert any("[0].extra: unknown key 'extra'" in e for e in err)
    assert any(":2:3: error: [1]: missing 'access'" in e for e in err)


def test_invalid_rules_file_exits_2(files, tmp_path, capsys):
    args = files("- {topic: a, access: read, expect: deny}\n")
    (tmp_path / "rules.yaml").write_text("users: {D1: [{topic: a, access: rw}]}\n")
    assert main(args) == 2
    assert "unknown access 'rw'" in capsys.readouterr().err


@pytest.mark.parametrize("text", [b"", b"{a: 1}\n", b"- [\n"])
def test_not_a_list_of_cases_is_refused(text):
    with pytest.raises(PolicyLoadError):
        parse_tests(text, "t.yaml")


def test_parsed_case_fields():
    (case,) = parse_tests(b"- {username: U, clientid: C, topic: t, access: subscribe, expect: deny, "
                          b"attributes: {O: Acme}}\n", "t.yaml")
    assert case.request.username == "U" and case.request.clientid == "C"
    assert case.request.access is Access.SUBSCRIBE and case.expect_allow is False
    assert case.request.attributes == {"O": ("Acme",)}
