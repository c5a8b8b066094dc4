"""The fast users-section reader (policyd/engine/fastusers.py) against the YAML path.

The fast reader is an accelerator: for every file, loading with it must give
exactly what libyaml gives (same spec, same positions, same problems), and it
must actually be used for files in the regular form, or large reloads are slow.
"""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.engine import PolicyLoadError, compile_policy, parse_text


def outcome(text: str, fast: bool):
    try:
        return parse_text(text.encode(), "rules.yaml", fast=fast)
    except PolicyLoadError as exc:
        return [str(p) for p in exc.problems]


def assert_same(text: str) -> object:
    """Both readers agree; returns the fast reader's result."""
    fast, slow = outcome(text, True), outcome(text, False)
    assert fast == slow, text
    return fast


REGULAR = """\
# fleet rules
superusers: [admin]
users:   # one block per device
  Device1:
    - topic: /device/%u/#      # its subtree
      access: readwrite
    - {topic: fleet/Device1/config, access: read}

  dev-2.example@site=a_b:
  - access: write
    topic: cmd/%c/+
#  a comment in column 1, then an identity with no rules of its own
  Empty:
  Device3:
    -   topic: a/%%u/b
        access: deny  
  "Device 4":
    - {topic: '#', access: "read"}   # quoted: '#' would start a comment
patterns:
  - {topic: /pattern/%u/#, access: read}
"""


def test_regular_file_is_read_fast_and_equal():
    spec = assert_same(REGULAR)
    assert spec.reader == "fast"
    assert list(spec.users) == ["Device1", "dev-2.example@site=a_b", "Empty", "Device3", "Device 4"]
    assert spec.users["Device 4"][0][:2] == ("#", "read")
    assert spec.users["Empty"] == ()
    rule = spec.users["dev-2.example@site=a_b"][0]
    assert (rule.topic, rule.access, rule.ref.line, rule.ref.column, rule.ref.key) == (
        "cmd/%c/+", "write", 10, 5, "users.dev-2.example@site=a_b[0]")


def test_sources_are_each_block_as_written():
    spec = parse_text(REGULAR.encode(), "rules.yaml")
    assert spec.user_sources["Device1"] == REGULAR[REGULAR.index("  Device1:"):REGULAR.index("  dev-2")]
    assert spec.user_sources["Device3"].startswith("  Device3:\n    -   topic: a/%%u/b")


@pytest.mark.parametrize("where", ["first", "last", "no final newline"])
def test_section_anywhere_in_the_file(where):
    users = "users:\n  D1:\n    - topic: a/%u\n      access: read\n"
    rest = "patterns:\n  - {topic: p/%u, access: read}\n"
    text = {"first": users + rest, "last": rest + users, "no final newline": rest + users.rstrip("\n")}[where]
    assert assert_same(text).reader == "fast"


# Each of these must leave the fast form (and still load exactly as YAML says).
OUT_OF_FORM = {
    "escape in single quotes": "users:\n  D1:\n    - {topic: 'it''s', access: read}\n",
    "escape in double quotes": 'users:\n  D1:\n    - {topic: "a\\tb", access: read}\n',
    "quoted empty identity": "users:\n  '':\n    - {topic: a, access: read}\n",
    "quoted unsafe identity": "users:\n  'a/b':\n    - {topic: a, access: read}\n",
    "quoted empty topic": "users:\n  D1:\n    - {topic: '', access: read}\n",
    "quotes across lines": "users:\n  D1:\n    - topic: 'a\n        b'\n      access: read\n",
    "flow list of rules": "users:\n  D1: [{topic: a, access: read}]\n",
    "non-ASCII identity": "users:\n  Gerät:\n    - {topic: a, access: read}\n",
    "tab": "users:\n  D1:\n    - {topic: a,\taccess: read}\n",
    "CRLF": "users:\r\n  D1:\r\n    - {topic: a, access: read}\r\n",
    "comment inside a rule": "users:\n  D1:\n    - topic: a\n      # why\n      access: read\n",
    "string across the users line": 'anonymous:\n  - topic: "x\nusers:\n  D1: y"\n    access: read\n',
    "flow list across the users line": "superusers: [a,\nusers:\n  D1: b]\n",
    "keep-chomped text before": "superusers:\n  - |+\n    a\nusers:\n  D1:\n    - {topic: a, access: read}\n",
    "column-1 list after": "patterns:\nusers:\n  D1:\n    - {topic: a, access: read}\n- topic: b/%u\n  access: read\n",
    "document end": "users:\n  D1:\n    - {topic: a, access: read}\n...\n",
    "two documents": "users:\n  D1:\n    - {topic: a, access: read}\n---\nusers: {}\n",
    "users twice": "users:\n  D1:\n    - {topic: a, access: read}\nusers:\n  D2: []\n",
    "users twice, quoted": "users:\n  D1:\n    - {topic: a, access: read}\n'users':\n  D2: []\n",
    "identity twice": "users:\n  D1:\n    - {topic: a, access: read}\n  D1:\n    - {topic: b, access: read}\n",
    "null identity": "users:\n  null:\n    - {topic: a, access: read}\n",
    "bad access": "users:\n  D1:\n    - {topic: a, access: rw}\n",
    "bad filter": "users:\n  D1:\n    - {topic: a/#/b, access: read}\n",
    "partial template": "users:\n  D1:\n    - {topic: a%u, access: read}\n",
    "unsafe identity": "users:\n  a+b:\n    - {topic: a, access: read}\n",
    "missing access": "users:\n  D1:\n    - topic: a\n  D2:\n    - {topic: a, access: read}\n",
    "rule left of its identity": "users:\n    D1:\n  - {topic: a, access: read}\n",
    "misaligned second key": "users:\n  D1:\n    - topic: a\n       access: read\n",
    "rules at two indentations": "users:\n  D1:\n    - {topic: a, access: read}\n     - {topic: b, access: read}\n",
    "identities at two indentations": "users:\n  D1: \n    - {topic: a, access: read}\n   D2:\n",
    "no space after colon": "users:\n  D1:\n    - {topic:a, access: read}\n",
    "alias": "users:\n  D1: &r\n    - {topic: a, access: read}\n  D2: *r\n",
    "empty section": "users:\npatterns: []\n",
    "unknown top-level key": "users:\n  D1:\n    - {topic: a, access: read}\nbogus: 1\n",
}


@pytest.mark.parametrize("name", sorted(OUT_OF_FORM))
def test_out_of_form_files_load_exactly_as_yaml_says(name):
    result = assert_same(OUT_OF_FORM[name])
    if not isinstance(result, list):
        assert result.reader.startswith("yaml: "), result.reader


# --- generated files -----------------------------------------------------------

GOOD_NAMES = ["D1", "D2", "dev-3", "a.b", "x@y", "e=1", "_u", "9", "Device000123", "'q'", '"D 9"', "'null'"]
BAD_NAMES = ["null", "a b", "a+b", "a#b", "a/b", "é", "-x", "a:b", "~", "%x", "Null", "'a/b'", "''", "'it''s'",
             '"a\\tb"', "'D1'"]
GOOD_TOPICS = ["a", "a/b", "/device/%u/#", "cmd/%c/+", "a/#", "+", "+/x", "a/%%u", "$SYS/x", "a%b", "a.b-c",
               "'#'", '"+/x/#"', "'a b/%u'", '"x:y,z"', "'null'"]
BAD_TOPICS = ["#", "%%u/y", "a/#/b", "a%u", "%u/x", "a b", "a:b", "null", "x,y", "a/+b", "[a]", "a #b",
              "''", "'a/#/b'", "'it''s'", '"a\\"b"', "'é'"]
GOOD_ACCESS = ["read", "write", "readwrite", "deny", "'read'", '"deny"']
BAD_ACCESS = ["rw", "null", "Read", "'rw'"]
REST_BEFORE = ["", "superusers: [admin]\n", "# top\n", "patterns:\n  - {topic: p/%u, access: deny}\n",
               "anonymous:\n- topic: pub/#\n  access: read\n", "superusers: [a,\n  b]\n", "---\n"]
REST_AFTER = ["", "groups:\n  g:\n    members: [D1, D2]\n    rules:\n      - {topic: g/#, access: deny}\n",
              "# end\n", "- x\n", "...\n", "patterns:\n  - topic: q/%u/#\n    access: readwrite\n"]


@st.composite
def rule_text(draw, dash_col: int, regular: bool) -> list[str]:
    pick = (lambda good, bad: draw(st.sampled_from(good if regular or draw(st.booleans()) else bad)))
    topic, access = pick(GOOD_TOPICS, BAD_TOPICS), pick(GOOD_ACCESS, BAD_ACCESS)
    dash = "-" + " " * draw(st.integers(1, 3))
    tail = draw(st.sampled_from(["", "  ", " # note"]))
    pairs = [("topic", topic), ("access", access)]
    if draw(st.booleans()):
        pairs.reverse()
    pad = " " * dash_col
    if draw(st.booleans()):
        return [f"{pad}{dash}{{{pairs[0][0]}: {pairs[0][1]}, {pairs[1][0]}: {pairs[1][1]}}}{tail}"]
    shift = 0 if regular else draw(st.sampled_from([0, 0, 0, -1, 1]))
    return [f"{pad}{dash}{pairs[0][0]}: {pairs[0][1]}{tail}",
            " " * (dash_col + len(dash) + shift) + f"{pairs[1][0]}: {pairs[1][1]}"]


@st.composite
def rules_file(draw, regular: bool) -> str:
    names = draw(st.lists(st.sampled_from(GOOD_NAMES if regular else GOOD_NAMES + BAD_NAMES),
                          min_size=1, max_size=4, unique=regular))
    name_col = draw(st.integers(1, 4))
    lines = ["users:" + draw(st.sampled_from(["", " ", "  # devices"]))]
    for name in names:
        lines.append(" " * name_col + name + ":")
        dash_col = name_col + draw(st.sampled_from([0, 2, 3] if regular else [0, 2, 3, -1]))
        for _ in range(draw(st.integers(0, 3))):
            lines += draw(rule_text(max(dash_col, 0), regular))
            if draw(st.integers(0, 5)) == 0:
                lines.append(draw(st.sampled_from(["", "   # between", "# col 1"])))
    before = draw(st.sampled_from(REST_BEFORE))
    after = draw(st.sampled_from(REST_AFTER[:3] if regular else REST_AFTER))
    text = before + "\n".join(lines) + "\n" + after
    if not regular and draw(st.integers(0, 9)) == 0:
        text = text.replace("\n", draw(st.sampled_from(["\r\n", "\t\n", "\n\t"])), 1)
    return text


@settings(max_examples=400, deadline=None)
@given(rules_file(regular=False))
def test_any_file_loads_the_same_with_or_without_the_fast_reader(text):
    assert_same(text)


@settings(max_examples=200, deadline=None)
@given(rules_file(regular=True))
def test_regular_files_take_the_fast_reader(text):
    spec = assert_same(text)
    assert not isinstance(spec, list), spec
    assert spec.reader == "fast", (spec.reader, text)


# --- compiled lazily ------------------------------------------------------------

LAZY = """\
users:
  D1:
    - {topic: own/%u, access: read}
groups:
  g:
    members: [D1, G1]
    rules:
      - {topic: group/#, access: write}
"""


def test_rule_sets_compile_on_first_use_and_unknown_names_are_never_stored():
    users = compile_policy(parse_text(LAZY.encode())).users
    assert sorted(users) == ["D1", "G1"] and len(users) == 2 and "G1" in users and "X" not in users
    assert users._compiled == {}  # noqa: SLF001 - nothing compiled by the reload itself
    first = users.get("D1")
    assert first is users.get("D1") is users["D1"]
    assert [r.topic for r in first.allows] == ["own/%u", "group/#"]
    assert [r.topic for r in users["G1"].allows] == ["group/#"]
    for i in range(1000):
        assert users.get(f"stranger{i}") is None
    with pytest.raises(KeyError):
        users["stranger"]
    assert sorted(users._compiled) == ["D1", "G1"]  # noqa: SLF001


def test_validate_says_when_a_large_users_section_misses_the_fast_form(tmp_path, capsys):
    from policyd.cli import main
    from policyd.cli.policy_cmds import LARGE_USERS_SECTION

    n = LARGE_USERS_SECTION
    regular = tmp_path / "regular.yaml"
    regular.write_text("users:\n" + "".join(f"  D{i}:\n    - {{topic: a/%u, access: read}}\n" for i in range(n)))
    flow = tmp_path / "flow.yaml"
    flow.write_text("users:\n" + "".join(f"  D{i}: [{{topic: a/%u, access: read}}]\n" for i in range(n)))
    assert main(["validate", str(regular), str(flow)]) == 0
    out = capsys.readouterr().out
    assert f"{regular}: note" not in out
    assert f"{flow}: note: the users section is read by the general YAML reader (line 2: " in out


def test_the_example_in_the_rules_reference_is_in_the_regular_form():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "rules.md").read_text()
    section = doc[doc.index("### Large files"):]
    example = section[section.index("```yaml\n") + 8:section.index("```\n", section.index("```yaml\n") + 8)]
    spec = assert_same(example)
    assert spec.reader == "fast" and list(spec.users) == ["Device1", "Device 2", "ops-console"]


# --- the daemon's interruptible composer (engine/fastyaml.py) ------------------------

def _composed_both_ways(text: str):
    def one(interruptible: bool):
        try:
            return parse_text(text.encode(), "rules.yaml", fast=False, interruptible=interruptible)
        except PolicyLoadError as exc:  # the Python composer names the alias; libyaml's does not
            return [re.sub(r"(found undefined alias) '[^']*'", r"\1", str(p)) for p in exc.problems]
    return one(False), one(True)


@settings(max_examples=300, deadline=None)
@given(rules_file(regular=False))
def test_the_interruptible_composer_reads_every_file_as_libyaml_does(text):
    c_composer, python_composer = _composed_both_ways(text)
    assert c_composer == python_composer


@pytest.mark.parametrize("text", [
    "users:\n  D1: &r\n    - {topic: a, access: read}\n  D2: *r\n",
    "users:\n  D1: *nope\n",
    "users: {}\n---\nusers: {}\n",
    "a: &x 1\nb: &x 2\n",
    "# only a comment\n",
])
def test_the_interruptible_composer_on_aliases_and_documents(text):
    c_composer, python_composer = _composed_both_ways(text)
    assert c_composer == python_composer


def test_release_takes_a_tree_apart_including_long_lists_inside():
    from policyd.engine.fastyaml import compose, release

    text = "big:\n" + "".join(f"  k{i}: [{', '.join(str(j) for j in range(3))}]\n" for i in range(2500))
    text += "deep:\n  only:\n    - [" + ", ".join(str(j) for j in range(2500)) + "]\n"
    root = compose(text)
    big, deep = root.value[0][1], root.value[1][1]
    inner = deep.value[0][1].value[0]  # a long list under two short ones
    assert len(big.value) == len(inner.value) == 2500
    release(root, chunk=100)
    assert big.value == [] and inner.value == []


def test_release_visits_aliased_nodes_once(monkeypatch):
    from policyd.engine import fastyaml

    laughs = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for level, prev in zip("bcd", "abc"):
        laughs += f"{level}: &{level} [{', '.join(['*' + prev] * 9)}]\n"
    root = fastyaml.compose(laughs)
    calls = []
    original = fastyaml.release
    monkeypatch.setattr(fastyaml, "release", lambda *a: (calls.append(1), original(*a))[1])
    fastyaml.release(root, 1000)
    assert len(calls) < 100  # 9**4 = 6,561 paths lead to the 9 strings of `a`
