"""Property-based fuzzing (hypothesis) of the YAML loader and the engine.

Whatever the bytes, loading either returns a policy or raises PolicyLoadError; every loaded
policy compiles; no decision raises; and an identity that is unsafe to substitute never reaches
another identity's subtree through a template.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyd.engine import Access, PolicyLoadError, Request, compile_policy, parse_text

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from reliability import record  # noqa: E402

EXAMPLES = 1000
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                    database=None)

KEYS = ["superusers", "users", "groups", "patterns", "anonymous", "certificates", "topic", "access",
        "members", "rules", "match", "Device123", "read", "write", "readwrite", "deny", "subscribe"]
TOPIC_PARTS = ["/device", "%u", "%c", "%%u", "+", "#", "$SYS", "", "a", "é", "\x00", "%"]
topic_text = st.lists(st.sampled_from(TOPIC_PARTS), min_size=0, max_size=6).map("/".join)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    st.sampled_from(KEYS), topic_text, st.text(max_size=20))
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner,
                                            max_size=4)),
    max_leaves=30)
rule = st.fixed_dictionaries({"topic": topic_text,
                              "access": st.sampled_from(["read", "write", "readwrite", "deny", "subscribe"])})
plausible_policies = st.fixed_dictionaries({}, optional={
    "superusers": st.lists(st.sampled_from(["admin", "+", "a/b", ""]), max_size=2),
    "users": st.dictionaries(st.sampled_from(["Device123", "Victim", "%u", "#"]), st.lists(rule, max_size=3),
                             max_size=2),
    "patterns": st.lists(rule, max_size=3),
    "anonymous": st.lists(rule, max_size=2),
})
identities = st.one_of(st.none(), st.binary(max_size=24), st.text(max_size=24),
                       st.sampled_from(["Device123", "Victim", "+", "#", "a/b", "%u", "%c", ""]))
topics = st.one_of(st.binary(max_size=40), topic_text, st.sampled_from(["/device/Victim/x", "#", "$SYS/x"]))
accesses = st.sampled_from(list(Access))
# Unsubscribing is always allowed (it grants nothing); the subtree property is about the rest.
granting = st.sampled_from([Access.READ, Access.WRITE, Access.SUBSCRIBE])


def _load(data: bytes):
    try:
        return parse_text(data, "fuzz.yaml")
    except PolicyLoadError:
        return None


def _decide_some(policy, requests) -> None:
    for username, clientid, topic, access in requests:
        decision = policy.decide(Request(username, clientid, topic, access))
        assert isinstance(decision.allowed, bool)


def test_arbitrary_bytes_load_or_refuse_cleanly():
    counts = {"examples": 0, "loaded": 0}

    @SETTINGS
    @given(st.binary(max_size=2048))
    def run(data):
        counts["examples"] += 1
        counts["loaded"] += _load(data) is not None

    run()
    _record("bytes", "arbitrary bytes", counts)


def test_arbitrary_yaml_documents_load_compile_and_decide():
    counts = {"examples": 0, "loaded": 0}

    @SETTINGS
    @given(st.one_of(documents, plausible_policies),
           st.lists(st.tuples(identities, identities.filter(lambda v: v is not None), topics, accesses),
                    max_size=8))
    def run(doc, requests):
        counts["examples"] += 1
        spec = _load(yaml.safe_dump(doc, allow_unicode=True).encode())
        if spec is not None:
            counts["loaded"] += 1
            _decide_some(compile_policy(spec), requests)

    run()
    assert counts["loaded"] > 0, "the generator never produced a loadable policy"
    _record("documents", "generated YAML documents (random trees and plausible policies) + decisions", counts)


VICTIM_POLICY = compile_policy(parse_text(b"""\
users:
  Victim:
    - {topic: /device/%u/#, access: readwrite}
patterns:
  - {topic: /device/%u/#, access: readwrite}
  - {topic: /client/%c/#, access: readwrite}
""", "victim.yaml"))
UNSAFE = st.one_of(
    st.text(min_size=1, max_size=12).map(lambda s: s + st_choice_marker(s)),
    st.binary(min_size=1, max_size=12).filter(lambda b: _invalid_utf8(b)),
)


def st_choice_marker(s: str) -> str:
    # Deterministically append one character that makes a value unsafe to substitute.
    return "+#/\x00"[len(s) % 4]


def _invalid_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_unsafe_identities_never_reach_another_subtree():
    counts = {"examples": 0, "loaded": 0}

    @SETTINGS
    @given(UNSAFE, UNSAFE, granting, st.sampled_from(["x", "+", "#", "a/b"]))
    def run(username, clientid, access, tail):
        counts["examples"] += 1
        for topic in (f"/device/Victim/{tail}", f"/client/Victim/{tail}", "/device/#", "#"):
            assert not VICTIM_POLICY.decide(Request(username, clientid, topic, access)).allowed, \
                (username, clientid, topic, access)

    run()
    _record("identities", "unsafe usernames/client ids (+ # / NUL, invalid UTF-8) vs templates", counts,
            happened=f"{counts['examples']} examples × 4 topics/filters: none allowed into Victim's "
                     "subtree or a wildcard filter")


def _record(key: str, what: str, counts: dict, happened: str = "") -> None:
    record(f"fuzz-engine-{key}", row=f"hypothesis: {what}",
           how=f"hypothesis, {EXAMPLES} examples, loader + compile + decide in-process",
           test="tests/unit/test_fuzz_engine.py",
           happened=happened or (f"{counts['examples']} examples ({counts['loaded']} loaded as policies): "
                                 "only PolicyLoadError raised, every decision answered"),
           lost="n/a", denied_delivered=0)
