"""`policyd import-acl`: a Mosquitto acl_file becomes rules that decide what Mosquitto decides."""

import os
import random
import stat
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.engine import Access, Request, compile_policy, parse_text
from policyd.engine.acl_import import import_acl, parse_acl
from mosquitto_acl import AclRefused, MosquittoAcl, realistic_acl

R, W = Access.READ, Access.WRITE


def convert(text, order="mosquitto"):
    rules, problems = import_acl(text, "acl", order)
    return rules, [str(p) for p in problems]


def imported(text, order="mosquitto"):
    rules, problems = convert(text, order)
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
    assert list(acl.users) == ["D1", "D2"]


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


@pytest.mark.parametrize("order", ["mosquitto", "deny-first"])
def test_patterns_and_anonymous_section(order):
    p = imported("topic read public/#\nuser D1\ntopic write d1/out\npattern readwrite dev/%u/#\n"
                 "pattern read cid/%c\n", order)
    assert allowed(p, None, "public/x", R) and not allowed(p, None, "public/x", W)
    assert allowed(p, "D1", "d1/out", W) and not allowed(p, "D2", "d1/out", W)
    assert allowed(p, "D2", "dev/D2/x", W) and not allowed(p, None, "dev/D2/x", W)
    # a pattern without %u applies to anonymous clients in Mosquitto
    assert allowed(p, None, "cid/c9", R, clientid="c9")
    assert not allowed(p, "D1", "public/x", R)  # the anonymous section is not for named users


def test_user_deny_and_pattern_deny_keep_mosquitto_answers():
    p = imported("user D1\ntopic deny dev/D1/secret\ntopic read other/x\npattern readwrite dev/%u/#\n"
                 "pattern deny other/%u\n")
    assert not allowed(p, "D1", "dev/D1/secret", W)  # user deny is checked first in Mosquitto too
    assert allowed(p, "D1", "dev/D1/x", W)
    assert not allowed(p, "D2", "other/D2", R)      # pattern deny; D2 has no user block


@pytest.mark.parametrize("acl, order, message", [
    ("pattern read devices/#\n", "deny-first", "has no %u or %c"),
    ("pattern read dev%u/#\n", "mosquitto", "inside the level 'dev%u'"),
    ("user D1\ntopic read a/#/b\n", "mosquitto", "invalid topic filter"),
    ("user D1\ntopic read dev/#\npattern deny dev/%u/secret\n", "deny-first", "can match the same topic"),
    ("topic read cid/#\npattern deny cid/%c\n", "deny-first", "the anonymous section"),
])
def test_what_policyd_cannot_express_is_an_error(acl, order, message):
    rules, problems = convert(acl, order)
    assert rules is None
    assert any("error" in p and message in p for p in problems), problems


@pytest.mark.parametrize("acl", [
    "user obs\ntopic read #\npattern deny %u/secret\n",               # an observer and a pattern deny
    "user D1\ntopic read dev/#\npattern deny dev/%u/secret\n",          # a user allow over a pattern deny
    "topic read cid/#\npattern deny cid/%c\n",                          # the same for anonymous clients
    "pattern read devices/#\n",                                         # a pattern for every client
])
def test_files_the_default_order_cannot_express_import_in_mosquitto_order(acl):
    rules, problems = convert(acl)
    assert rules is not None and "\norder: mosquitto\n" in rules, problems
    assert not any(": error:" in p for p in problems)


def test_mosquitto_order_user_allow_beats_pattern_deny():
    p = imported("user obs\ntopic read #\nuser D1\ntopic read dev/#\npattern deny %u/secret\n"
                 "pattern deny dev/%u/secret\npattern read dev/%u/#\n")
    assert allowed(p, "obs", "obs/secret", R)              # obs's own `#` decides before the pattern deny
    assert allowed(p, "D1", "dev/D1/secret", R)            # D1's own dev/# likewise
    assert not allowed(p, "D2", "dev/D2/secret", R)        # D2 has no block: the patterns decide
    assert allowed(p, "D2", "dev/D2/x", R)
    assert not allowed(p, "D1", "dev/D1/x", W)             # D1's read does not grant write; patterns: read


def test_unsafe_user_names_are_left_out_with_a_warning():
    rules, problems = convert("user a/b\ntopic read x\nuser D1\ntopic read y\n")
    assert rules is not None and '"a/b"' not in rules
    assert any("warning" in p and "left out" in p for p in problems), problems
    p = compile_policy(parse_text(rules.encode()))
    assert not allowed(p, "a/b", "x", R) and allowed(p, "D1", "y", R)


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
    acl.write_text("pattern read x%u/#\n")
    proc = run("import-acl", str(acl), "-o", str(tmp_path / "never.yaml"))
    assert proc.returncode == 1 and f"{acl}:1:1: error:" in proc.stderr
    assert not (tmp_path / "never.yaml").exists()
    assert run("import-acl", str(tmp_path / "missing")).returncode == 2


# --- property: imported rules decide what Mosquitto decides -----------------
# tests/mosquitto_acl.py is a port of Mosquitto 2.0.11's acl_file check, written from
# security_default.c, not from policyd's engine; the e2e differential test checks it
# against the real broker.


LEVEL = st.sampled_from(["a", "%u", "%c", "+", "#", "$s"])


@st.composite
def acl_files(draw):
    out, user = [], None
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
    return "\n".join(out) + "\n"


NAMES = ["a", "u1", "c1", "%u", "$s"]
TOPICS = NAMES + [f"{x}/{y}" for x in NAMES for y in NAMES]


def assert_same_decisions(policy, oracle, users, clientids, topics, rules):
    for username in users:
        for clientid in clientids(username):
            for topic in topics:
                for access in (R, W, Access.SUBSCRIBE):
                    ours = policy.decide(Request(username, clientid, topic, access)).allowed
                    theirs = oracle.decide(username, clientid, topic, int(access))
                    assert ours == theirs, (username, clientid, topic, access, rules)


@settings(max_examples=250, deadline=None)
@given(text=acl_files())
def test_imported_rules_decide_like_mosquitto(text):
    # every request of a small universe, against every generated file: each file Mosquitto
    # accepts converts, and each one it refuses is refused
    rules, problems = import_acl(text, "acl")
    try:
        oracle = MosquittoAcl.parse(text)
    except AclRefused:
        assert rules is None and any(": error:" in str(p) for p in problems)
        return
    assert rules is not None, (text, [str(p) for p in problems])
    policy = compile_policy(parse_text(rules.encode()))
    assert_same_decisions(policy, oracle, ("u1", "u2", "u+", None),
                          lambda u: ("c1", "u1", "c#"), TOPICS, rules)


@pytest.mark.parametrize("seed", range(40))
def test_realistic_acl_files_decide_like_mosquitto(seed):
    shape = realistic_acl(random.Random(seed))
    rules, problems = import_acl(shape.text, "acl")
    assert rules is not None, (shape.text, [str(p) for p in problems])
    policy = compile_policy(parse_text(rules.encode()))
    assert_same_decisions(policy, MosquittoAcl.parse(shape.text), shape.users + [None],
                          lambda u: (shape.clientids[u or ""],), shape.topics, rules)


def test_cli_output_refuses_non_regular_targets_and_reports_without_traceback(tmp_path):
    acl = tmp_path / "acl"
    acl.write_text("user D1\ntopic read a\n")
    run = lambda *a: subprocess.run([sys.executable, "-m", "policyd", *a], capture_output=True, text=True)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target, message in ((fifo, "not a regular file"), (tmp_path, "not a regular file"),
                            (tmp_path / "missing" / "rules.yaml", "cannot write"),
                            ("/dev/null", "not a regular file")):
        proc = run("import-acl", str(acl), "-o", str(target))
        assert proc.returncode == 2 and message in proc.stderr, (target, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acl", "fifo"]  # no stray temp file
    out = tmp_path / "rules.yaml"
    assert run("import-acl", str(acl), "-o", str(out)).returncode == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o640 and "order: mosquitto" in out.read_text()
    assert run("import-acl", str(acl), "--order", "deny-first").stdout.count("order:") == 0


@pytest.mark.parametrize("topic, valid", [
    ("a/#", True), ("#", True), ("/#", True), ("a b/#", True), ("é/x", True), ('a"b', True), ("a\\b", True),
    ("$SYS/#", True), ("a//b", True), ("a#", False), ("a/#/b", False), ("#/a", False), ("a/b#", False),
    ("x" * 70000, False),
])
def test_the_fast_path_accepts_what_the_full_check_accepts(topic, valid):
    rules, problems = convert(f"user D1\ntopic read {topic}\n")
    assert (rules is not None) is valid, problems
    if valid:
        spec = parse_text(rules.encode(), "out.yaml")
        assert [r.topic for r in spec.users["D1"]] == [topic]
