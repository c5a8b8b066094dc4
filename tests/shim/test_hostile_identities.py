"""Hostile usernames, client ids and topics through the real plugin against a real daemon.

The stub broker hands the plugin C strings, exactly as Mosquitto does: a NUL ends the value
there (Mosquitto itself refuses a CONNECT whose strings contain U+0000), every other byte,
including invalid UTF-8, reaches the daemon as it came. None of them may widen access, and the
plugin must answer every one.
"""

from __future__ import annotations

import sys

import pytest
from harness import ROOT
from shimlib import ALLOW, DENIED, READ, SUBSCRIBE, WRITE

sys.path.insert(0, str(ROOT / "bench"))
from reliability import record  # noqa: E402

RULES = """\
users:
  Victim:
    - {topic: /device/%u/#, access: readwrite}
patterns:
  - {topic: /device/%u/#, access: readwrite}
  - {topic: /client/%c/#, access: readwrite}
"""

# (username, client id): values that would reach Victim's subtree if substituted naively.
HOSTILE_IDENTITIES = [
    (b"+", b"c"), (b"#", b"c"), (b"Victim/+", b"c"), (b"x/../Victim", b"c"), (b"%c", b"Victim"),
    (b"%u", b"c"), (b"Vic\xfftim", b"c"), (b"\xc3\x28", b"c"), (b"\x00Victim", b"c"),
    (b"", b"c"), (b"A" * 65536, b"c"),
    (b"ok", b"+"), (b"ok", b"#"), (b"ok", b"Victim/x"), (b"ok", b"\xff\xfe"), (b"ok", b"B" * 65536),
]
# Topics each identity tries: Victim's subtree for every access, and the wildcard forms.
VICTIM_TOPICS = [b"/device/Victim/t", b"/device/Victim/#", b"/device/+/t", b"/device/#", b"#",
                 b"/client/Victim/t", b"/client/+/t", b"/client/#"]

MAX_TOPIC = 65535


def _allowed_topics(shim, client, topics) -> tuple[set[bytes], int]:
    allowed, n = set(), 0
    for topic in topics:
        for access in (READ, WRITE, SUBSCRIBE):
            rc = shim.check(client, access, topic)
            assert rc in (ALLOW, DENIED), rc
            n += 1
            if rc == ALLOW:
                allowed.add(topic)
    return allowed, n


def test_hostile_identities_never_reach_another_subtree(make_daemon, make_shim):
    shim = make_shim(make_daemon(rules=RULES))
    checks = 0
    for username, client_id in HOSTILE_IDENTITIES:
        client = shim.client(client_id, username)
        allowed, n = _allowed_topics(shim, client, VICTIM_TOPICS)
        # Only a client id's own subtree (client id "Victim" owns /client/Victim/...).
        assert allowed <= {b"/client/" + client_id + b"/t"}, (username[:20], client_id[:20], allowed)
        checks += n
    # A NUL-truncated username is exactly the clean prefix: "Victim\0evil" is Victim.
    victim_prefix = shim.client(b"c", b"Victim\x00evil")
    assert shim.allowed(victim_prefix, WRITE, b"/device/Victim/t")
    # The clean identity still has its access after all of that.
    assert shim.allowed(shim.client(b"c2", b"Victim"), WRITE, b"/device/Victim/t")
    stats = shim.close()
    assert stats["internal"] == 0 and stats["protocol"] == 0, stats
    record("hostile-01-identities", row="hostile usernames / client ids (shim, in-process)",
           how=f"{len(HOSTILE_IDENTITIES)} identities (`+ # / %u %c`, NUL, invalid UTF-8, empty, 64 KiB) "
               f"× {len(VICTIM_TOPICS)} topics/filters × read/write/subscribe against a real policyd",
           test="tests/shim/test_hostile_identities.py",
           happened=f"{checks} checks answered, none reached another identity's subtree (no protocol/internal error); "
                    "NUL truncates to the clean prefix as in Mosquitto",
           lost="n/a", denied_delivered=0)


HOSTILE_TOPICS = [
    b"/device/Dev/" + b"x" * (MAX_TOPIC - len(b"/device/Dev/")),          # exactly the MQTT maximum
    b"/device/Dev/" + b"x" * MAX_TOPIC,                                   # over it
    b"/device/Dev" + b"/a" * 30000,                                       # 30 000 levels
    b"/device/Dev//", b"/device/Dev///x", b"//", b"/", b"",               # empty levels
    b"$SYS/broker/clients", b"$share/g/device/Dev/t", b"$share/g/#", b"$share//#", b"$share/g",
    b"/device/Dev/\xff\xfe", b"/device/Dev/a+b", b"/device/Dev/a#", b"/device/Dev/+/x",
]


@pytest.mark.parametrize("access", [READ, WRITE, SUBSCRIBE])
def test_hostile_topics_are_answered_and_keep_the_rules(make_daemon, make_shim, access):
    shim = make_shim(make_daemon(rules=RULES))
    dev = shim.client(b"c", b"Dev")
    answers = {}
    for topic in HOSTILE_TOPICS:
        rc = shim.check(dev, access, topic)
        assert rc in (ALLOW, DENIED), (topic[:40], rc)
        answers[topic] = rc
    # Never beyond its own subtree, whatever the shape.
    for topic in (b"$SYS/broker/clients", b"$share/g/#", b"//", b"/", b"", b"$share//#"):
        assert answers[topic] == DENIED, topic
    # Over-long topics under the device's own subtree are answered like any other of its topics
    # (Mosquitto never passes one: MQTT strings end at 65535 bytes).
    assert shim.allowed(dev, access, b"/device/Dev/t")
    stats = shim.close()
    assert stats["internal"] == 0, stats
    if access == SUBSCRIBE:
        record("hostile-02-topics", row="hostile topics and filters (shim, in-process)",
               how="65535-byte topic, 65535+ bytes, 30 000 levels, empty levels, `$SYS`, `$share/…`, "
                   "invalid UTF-8, misplaced `+ #`; read/write/subscribe",
               test="tests/shim/test_hostile_identities.py::test_hostile_topics_are_answered_and_keep_the_rules",
               happened=f"{len(HOSTILE_TOPICS) * 3} checks answered; nothing outside the device's own "
                        "subtree allowed (`$SYS`, `$share`, empty levels denied)",
               lost="n/a", denied_delivered=0)
