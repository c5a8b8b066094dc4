"""Hostile input through the real stack: certificate CNs, client ids, topics, and rules files.

Victim subscribes to its own subtrees for the whole module; whatever it receives from anyone
else is a denied message delivered, and must never happen.
"""

from __future__ import annotations

import queue
import re
import sys

import pytest
from harness import ROOT, Broker, BrokerConfig, Device, PolicyDaemon, run_policyd, wait_for

sys.path.insert(0, str(ROOT / "bench"))
from reliability import record  # noqa: E402

NOT_AUTHORIZED = 0x87
MAX_TOPIC = 65535
RULES = """\
patterns:
  - topic: /device/%u/#
    access: readwrite
  - topic: /client/%c/#
    access: readwrite
"""
# CNs that would reach Victim's subtree (or every subtree) if substituted naively.
HOSTILE_CNS = ["+", "Victim/+", "Victim/#", "%c", "..", "Victim/../x", " Victim", "Victim\u200b"]
HOSTILE_CLIENT_IDS = ["+", "#", "Victim/+", "Victim/x", "%u", "c" * 65000]


@pytest.fixture(scope="module")
def stack(workdir, pki):
    daemon = PolicyDaemon(workdir, RULES, "--no-watch").start()
    broker = Broker(workdir, pki, daemon, BrokerConfig()).start()
    victim = Device(broker, "Victim", client_id="Victim").connect()
    assert victim.subscribe("/device/Victim/#") == 1
    assert victim.subscribe("/client/Victim/#") == 1
    yield daemon, broker, victim
    victim.close()
    broker.stop()
    daemon.stop()


def _victim_received_nothing(victim: Device) -> None:
    got = victim.received(0.3)
    assert got == [], f"denied messages delivered to Victim: {got[:3]}"


def _safe_name(cn: str) -> str:
    return "hostile-" + "".join(c if c.isalnum() else f"x{ord(c):x}" for c in cn)


def test_hostile_certificate_names_reach_nothing_of_others(stack, pki):
    from policyd import certs
    from policyd.engine.model import identity_problem

    daemon, broker, victim = stack
    attempts = 0
    for cn in HOSTILE_CNS:
        pair = certs.issue_client(pki.dir, cn=cn, name=_safe_name(cn), allow_unsafe_cn=True, force=True)
        # The first check of such a certificate is denied and ends the connection, so each
        # attempt gets a connection of its own.
        attempts_of = [("publish", t) for t in ("/device/Victim/t", "/client/Victim/t", "/device/x/t")] + \
            [("subscribe", f) for f in ("/device/#", "/device/Victim/#", "/device/+/t", "#")]
        for action, target in attempts_of:
            dev = Device(broker, cn, client_id=_safe_name(cn), cert=pair.cert_path, key=pair.key_path).connect()
            try:
                answer = dev.publish(target, b"attack") if action == "publish" else dev.subscribe(target)
                assert answer == NOT_AUTHORIZED, (cn, action, target)
                if identity_problem(cn):  # an unusable name: the connection itself is refused
                    try:
                        dev.disconnects.get(timeout=15)   # a kick at the next TICK; slack for a loaded machine
                    except queue.Empty:
                        raise AssertionError(f"{cn!r} stayed connected after {action} {target}") from None
                attempts += 1
            finally:
                dev.close()
    _victim_received_nothing(victim)
    assert broker.alive
    record("hostile-05-cert-cn", row="hostile certificate CNs (real broker)",
           how=f"certificates with CN {', '.join(repr(c) for c in HOSTILE_CNS)} (policyd certs "
               "allow_unsafe_cn), paho MQTT v5 clients, use_identity_as_username",
           test="tests/e2e/test_hostile.py::test_hostile_certificate_names_reach_nothing_of_others",
           happened=f"{attempts} publishes/subscriptions into others' subtrees all refused (0x87)",
           lost="n/a", denied_delivered=0)


def test_hostile_client_ids_reach_nothing_of_others(stack):
    daemon, broker, victim = stack
    attempts = 0
    for client_id in HOSTILE_CLIENT_IDS:
        dev = Device(broker, "Device123", client_id=client_id).connect()
        try:
            for topic in ("/client/Victim/t", "/client/Victim/x/t", "/device/Victim/t"):
                assert dev.publish(topic, b"attack") == NOT_AUTHORIZED, (client_id[:20], topic)
                attempts += 1
            assert dev.subscribe("/client/#") == NOT_AUTHORIZED
            attempts += 1
            assert dev.publish("/device/Device123/t", b"mine") == 0   # its own access is unchanged
        finally:
            dev.close()
    _victim_received_nothing(victim)
    record("hostile-06-client-id", row="hostile client ids (real broker)",
           how="paho client ids `+ # Victim/+ Victim/x %u` and 65 000 bytes, with a rule on /client/%c/#",
           test="tests/e2e/test_hostile.py::test_hostile_client_ids_reach_nothing_of_others",
           happened=f"{attempts} attempts into Victim's subtrees refused; the device's own access kept",
           lost="n/a", denied_delivered=0)


def test_topics_at_the_limits_and_shared_subscriptions(stack):
    daemon, broker, victim = stack
    dev = Device(broker, "Dev", client_id="Dev").connect()
    try:
        longest = "/device/Dev/" + "x" * (MAX_TOPIC - len("/device/Dev/"))
        # Mosquitto itself drops a client sending more than 200 levels (protocol error), before any
        # ACL check; the shim tests cover 30 000 levels.
        many_levels = "/device/Dev" + "/a" * 190
        assert dev.subscribe("/device/Dev/#") == 1
        for topic in (longest, many_levels, "/device/Dev//x//"):
            assert dev.publish(topic, b"ok") == 0, topic[:40]
        got = {t for t, _ in dev.received(1.0)}
        assert {longest, many_levels, "/device/Dev//x//"} <= got
        # $-prefixed and shared filters never reach beyond the device's own subtree.
        assert dev.subscribe("$SYS/#") == NOT_AUTHORIZED
        assert dev.subscribe("$share/g//device/Victim/#") == NOT_AUTHORIZED
        assert dev.subscribe("$share/g/#") == NOT_AUTHORIZED
        assert dev.subscribe("$share/g//device/Dev/#") == 1
        assert dev.publish("$SYS/broker/x", b"attack") == NOT_AUTHORIZED
        assert dev.publish("/device/Victim" + "/a" * 190, b"attack") == NOT_AUTHORIZED
        assert dev.publish("/device/Dev/shared", b"s") == 0
        assert ("/device/Dev/shared", b"s") in dev.received(1.0)
    finally:
        dev.close()
    _victim_received_nothing(victim)
    record("hostile-07-topics-broker", row="topics at the limits, `$` and `$share/` (real broker)",
           how="65535-byte topic, 190 levels (Mosquitto's own limit is 200), empty levels; `$SYS/#`, `$share/g/...` subscriptions",
           test="tests/e2e/test_hostile.py::test_topics_at_the_limits_and_shared_subscriptions",
           happened="own-subtree topics at the limits delivered; `$SYS` and shares of others' "
                    "subtrees refused; a share of its own subtree granted",
           lost="0", denied_delivered=0)


BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))
BAD_RULES = {
    "100MB-file": None,    # written separately (streamed)
    "billion-laughs": BILLION_LAUGHS,
    "deep-nesting": "users: " + "[" * 10000 + "]" * 10000 + "\n",
    "nul-and-invalid-utf8": "users:\n  \x00\udcff: []\n",
    "tabs-and-garbage": "\t\tusers:\n\t- {{{\n",
    "python-tag": "users: !!python/object/apply:os.system [id]\n",
    "duplicate-keys": "users: {}\nusers: {}\n",
    "wrong-types": "users: 5\npatterns: {a: b}\nanonymous: [[[]]]\n",
    "huge-scalar-key": "users:\n  " + "k" * 2_000_000 + ": []\n",
}


def _write_bad(path, kind: str) -> None:
    if kind == "100MB-file":
        with open(path, "wb") as fh:
            chunk = b"# padding\n" * 100_000
            for _ in range(100):
                fh.write(chunk)
        return
    path.write_bytes(BAD_RULES[kind].encode("utf-8", "surrogateescape"))


def _generation(daemon: PolicyDaemon) -> int:
    # status exits 1 while the last reload was rejected (what this test does on purpose)
    proc = run_policyd("status", "--address", daemon.admin_address, check=False)
    assert proc.returncode in (0, 1), proc.stderr
    out = proc.stdout
    return int(re.search(r"generation: (\d+)", out).group(1))


def test_malformed_rules_are_refused_and_the_old_policy_kept(stack):
    daemon, broker, victim = stack
    good = daemon.rules.read_text()
    dev = Device(broker, "Keeper", client_id="Keeper").connect()
    before = _generation(daemon)
    try:
        for kind in BAD_RULES:
            _write_bad(daemon.rules, kind)
            proc = run_policyd("reload", "--address", daemon.admin_address, check=False, timeout=60)
            assert proc.returncode != 0, (kind, proc.stdout)
            assert daemon.proc.poll() is None, kind
            assert _generation(daemon) == before, kind
            assert dev.publish(f"/device/Keeper/{kind}", b"ok") == 0, kind
            assert dev.publish("/device/Victim/t", b"attack") == NOT_AUTHORIZED, kind
    finally:
        daemon.rules.write_text(good)
        dev.close()
    _victim_received_nothing(victim)
    wait_for(lambda: run_policyd("reload", "--address", daemon.admin_address, check=False).returncode == 0,
             10, "a good reload afterwards")
    record("hostile-08-rules-files", row="malformed rules files (real daemon, Admin.Reload)",
           how=", ".join(BAD_RULES) + " written over rules.yaml, then `policyd reload`",
           test="tests/e2e/test_hostile.py::test_malformed_rules_are_refused_and_the_old_policy_kept",
           happened=f"{len(BAD_RULES)}/{len(BAD_RULES)} refused with problems (100 MB by size before "
                    "parsing, aliases refused), generation unchanged, daemon kept answering",
           lost="0", denied_delivered=0, recovery="none needed")
