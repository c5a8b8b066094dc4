"""`policyd import-acl`: a Mosquitto acl_file becomes rules that decide what Mosquitto decides."""

import subprocess
import sys

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from policyd.engine import Access, Request, compile_policy, parse_text
from policyd.engine.acl_import import import_acl, parse_acl

R, W = Access.READ, Access.WRITE


def convert(text):
    rules, problems = import_acl(text, "acl")
    return rules, [str(p) for p in problems]


def imported(text):
    rules, problems = convert(text)
    assert rules is not None, problems
    return compile_policy(parse_text(rules.encode(), "out.yaml"))


def allowed(policy, user, topic, access, clientid="cid"):
    return policy.decide(Request(user, clientid, topic, access)).allowed


# --- reading the file the way Mosquitto does --------------------------------


def test_lines_comments_blocks_and_default_access():
    acl = parse_acl("# comment\n\ntopic read pub/#\nuser D1\ntopic   write   a b/c  \ntopic x/y\nuser D2\n"
                    "pattern deny %u/secret\nuser D1\ntopic read\n", "acl")
    assert acl.ok, acl.problems
    got = [(r.kind, r.access, r.topic, r.user, r.line) for r in acl.lines]
    assert got == [
        ("topic", "read", "pub/#", None, 3),          # before the first user line: anonymous
        ("topic", "write", "a b/c", "D1", 5),         # the topic is the rest of the line, trimmed
        ("topic", "readwrite", "x/y", "D1", 6),       # no access word: readwrite
        ("pattern", "deny", "%u/secret", "D2", 8),    # patterns ignore the user block
        ("topic", "readwrite", "read", "D1", 10),     # one word: it is the topic, readwrite
    ]
    assert acl.users == ["D1", "D2"]


@pytest.mark.parametrize("line, message", [
    ("topic", "without a topic"),
    ("topic rw a/b", "invalid access 'rw'"),
    ("user", "without a name"),
    ("  # indented comment", "invalid line"),        # Mosquitto only skips '#' in the first column
    ("topic\tread\ta", "invalid line"),              # fields are separated by spaces only
    ("acl a/b", "invalid line"),
])
def test_lines_mosquitto_refuses_are_errors(line, message):
    rules, problems = convert(f"user D1\n{line}\n")
    assert rules is None
    assert problems[0].startswith("acl:2:1: error:") and message in problems[0]


# --- translation ------------------------------------------------------------


def test_topic_line_percent_u_stays_literal_and_warns():
    rules, problems = convert("user Device123\ntopic readwrite /device/%u/#\n")
    assert '"/device/%%u/#"' in rules
    assert len(problems) == 1 and "warning" in problems[0] and "kept literal" in problems[0]
    p = compile_policy(parse_text(rules.encode()))
    assert not allowed(p, "Device123", "/device/Device123/t", W)   # as in Mosquitto
    assert allowed(p, "Device123", "/device/%u/t", W)              # the literal topic


def test_percent_signs_survive_in_patterns_and_topics():
    p = imported("user D1\ntopic read 50%/x%cy\npattern read %/%u\n")
    assert allowed(p, "D1", "50%/x%cy", R)
    assert allowed(p, "D1", "%/D1", R)
    assert not allowed(p, "D1", "%%/D1", R)


def test_patterns_and_anonymous_section():
    p = imported("topic read public/#\nuser D1\ntopic write d1/out\npattern readwrite dev/%u/#\n"
                 "pattern read cid/%c\n")
    assert allowed(p, None, "public/x", R) and not allowed(p, None, "public/x", W)
    assert allowed(p, "D1", "d1/out", W) and not allowed(p, "D2", "d1/out", W)
    assert allowed(p, "D2", "dev/D2/x", W) and not allowed(p, None, "dev/D2/x", W)
    # a pattern without %u applies to anonymous clients in Mosquitto: copied into `anonymous`
    assert allowed(p, None, "cid/c9", R, clientid="c9")
    assert not allowed(p, "D1", "public/x", R)  # the anonymous section is not for named users


def test_user_deny_and_pattern_deny_keep_mosquitto_answers():
    p = imported("user D1\ntopic deny dev/D1/secret\ntopic read other/x\npattern readwrite dev/%u/#\n"
                 "pattern deny other/%u\n")
    assert not allowed(p, "D1", "dev/D1/secret", W)  # user deny is checked first in Mosquitto too
    assert allowed(p, "D1", "dev/D1/x", W)
    assert not allowed(p, "D2", "other/D2", R)      # pattern deny; D2 has no user block


@pytest.mark.parametrize("acl, message", [
    ("pattern read devices/#\n", "has no %u or %c"),
    ("pattern read dev%u/#\n", "inside the level 'dev%u'"),
    ("user D1\ntopic read a/#/b\n", "invalid topic filter"),
    ("user a/b\ntopic read x\n", "policyd refuses such names"),
    ("user D1\ntopic read dev/#\npattern deny dev/%u/secret\n", "can match the same topic"),
    ("topic read cid/#\npattern deny cid/%c\n", "the anonymous section"),
])
def test_what_policyd_cannot_express_is_an_error(acl, message):
    rules, problems = convert(acl)
    assert rules is None
    assert any("error" in p and message in p for p in problems), problems


def test_pattern_deny_with_percent_u_does_not_conflict_with_anonymous_rules():
    # Mosquitto skips %u patterns for anonymous clients: no conflict, no copy
    p = imported("topic read dev/#\npattern deny dev/%u/secret\npattern read dev/%u/#\n")
    assert allowed(p, None, "dev/x/secret", R)
    assert not allowed(p, "x", "dev/x/secret", R)


def test_empty_acl_file_denies_everything():
    p = imported("# nothing\n")
    assert not allowed(p, "D1", "a", R) and not allowed(p, None, "a", R)


def test_cli_writes_output_and_exit_codes(tmp_path):
    acl = tmp_path / "acl"
    out = tmp_path / "rules.yaml"
    acl.write_text("user D1\ntopic read a/%u\n")
    run = lambda *a: subprocess.run([sys.executable, "-m", "policyd", *a], capture_output=True, text=True)
    proc = run("import-acl", str(acl), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "warning" in proc.stderr and out.read_text().startswith("# Imported from acl")
    acl.write_text("pattern read x/#\n")
    proc = run("import-acl", str(acl), "-o", str(tmp_path / "never.yaml"))
    assert proc.returncode == 1 and f"{acl}:1:1: error:" in proc.stderr
    assert not (tmp_path / "never.yaml").exists()
    assert run("import-acl", str(tmp_path / "missing")).returncode == 2


# --- property: imported rules decide what Mosquitto decides -----------------
# A deliberately plain port of Mosquitto 2.0's acl_file check (security_default.c),
# written here from its documented behaviour, not from policyd's engine.


def mosq_matches(sub: str, topic: str) -> bool:
    if sub.startswith("$") != topic.startswith("$"):
        return False
    s, t = sub.split("/"), topic.split("/")
    for i, level in enumerate(s):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(s) == len(t)


def mosq_expand(pattern: str, username, clientid) -> str:
    out, i = [], 0
    while i < len(pattern):
        if pattern[i] == "%" and i + 1 < len(pattern):
            if pattern[i + 1] == "c":
                out.append(clientid)
                i += 2
                continue
            if pattern[i + 1] == "u" and username is not None:
                out.append(username)
                i += 2
                continue
        out.append(pattern[i])
        i += 1
    return "".join(out)


BITS = {"read": 1, "write": 2, "readwrite": 3, "deny": 0}


def mosquitto_decide(lines, username, clientid, topic, access) -> bool:
    own = [(a, t) for kind, user, a, t in lines if kind == "topic" and user == username]
    patterns = [(a, t) for kind, _, a, t in lines if kind == "pattern"]
    has_block = any(kind == "topic" and user == username for kind, user, _, _ in lines)
    if not has_block and not patterns:
        return False
    for a, t in sorted(own, key=lambda r: r[0] != "deny"):
        if topic.startswith("$") and not t.startswith("$"):
            continue
        if mosq_matches(t, topic):
            if a == "deny":
                return False
            if BITS[a] & access:
                return True
    if patterns and (username and any(c in username for c in "+#") or any(c in clientid for c in "+#")):
        return False
    for a, t in sorted(patterns, key=lambda r: r[0] != "deny"):
        if "%u" in t and username is None:
            continue
        if mosq_matches(mosq_expand(t, username, clientid), topic):
            if a == "deny":
                return False
            if BITS[a] & access:
                return True
    return False


LEVEL = st.sampled_from(["a", "%u", "%c", "+", "#", "$s"])


@st.composite
def acl_files(draw):
    out, lines, user = [], [], None
    for _ in range(draw(st.integers(0, 6))):
        what = draw(st.sampled_from(["user", "topic", "topic", "pattern"]))
        if what == "user":
            user = draw(st.sampled_from(["u1", "u2"]))
            out.append(f"user {user}")
            continue
        levels = draw(st.lists(LEVEL, min_size=1, max_size=2))
        topic = "/".join(levels)
        access = draw(st.sampled_from(["read", "write", "readwrite", "deny", ""]))
        out.append(f"{what} {access} {topic}".replace("  ", " "))
        lines.append((what, user, access or "readwrite", topic))
    return "\n".join(out) + "\n", lines


NAMES = ["a", "u1", "c1", "%u", "$s"]
TOPICS = NAMES + [f"{x}/{y}" for x in NAMES for y in NAMES]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(acl=acl_files())
def test_imported_rules_decide_like_mosquitto(acl):
    # every request of a small universe, against each generated file that converts
    text, lines = acl
    rules, _ = import_acl(text, "acl")
    assume(rules is not None)  # errors are tested above; here: whatever converts, decides alike
    policy = compile_policy(parse_text(rules.encode()))
    for username in ("u1", "u2", None):
        for clientid in ("c1", "u1"):
            for topic in TOPICS:
                for access in (R, W):
                    ours = policy.decide(Request(username, clientid, topic, access)).allowed
                    theirs = mosquitto_decide(lines, username, clientid, topic, int(access))
                    assert ours == theirs, (username, clientid, topic, access, rules)
