"""Attacks on answers the plugin caches without asking (scopes sent ahead, scopes at CONNECT).

Real mosquitto, real plugin, real policyd in identity mode (the daemon verifies certificates).
"""

from __future__ import annotations

import time

import pytest

from test_identity_binding import CN, OU, Stack


@pytest.fixture(scope="module")
def stack():
    s = Stack(identity_mode=True)
    yield s
    s.close()


def test_a_retained_messages_publisher_is_never_answered_from_its_live_connections_cache(stack):
    """Mosquitto checks a retained message's publisher with a stand-in client (no connection, no
    certificate): policyd decides it without `certificates` rules (provenance UNKNOWN). Its live
    connection's cache (here the WRITE scope of its `ops` certificate, cached at CONNECT) holds
    answers decided with the certificate, under the same username and client id: serving the
    stand-in from it delivers a retained message the policy withholds."""
    # premise: with no live connection, the policy withholds it (the stand-in has no `ops` rule)
    gone = stack.device("RetOpsGone", [(CN, "RetOpsGone"), (OU, "ops")], client_id="RetOpsGone").connect()
    gone.client.publish("plant/valve/set", "gone", qos=1, retain=True).wait_for_publish(5)
    gone.close()
    time.sleep(0.3)
    first = stack.device("admin", [(CN, "admin")], client_id="admin-reader-1").connect()
    assert first.subscribe("plant/valve/set") == 1
    assert not [m for m in first.received(1.5) if m[0] == "plant/valve/set"], "premise: withheld"
    first.close()

    live = stack.device("RetOps", [(CN, "RetOps"), (OU, "ops")], client_id="RetOps").connect()
    live.client.publish("plant/valve/set", "open", qos=1, retain=True).wait_for_publish(5)
    time.sleep(0.3)
    reader = stack.device("admin", [(CN, "admin")], client_id="admin-reader-2").connect()
    assert reader.subscribe("plant/valve/set") == 1
    got = reader.received(1.5)
    assert ("plant/valve/set", b"open") not in got, (
        "the retained message's stand-in publisher was answered from its live connection's cache")


def test_a_takeover_by_another_certificate_of_the_identity_gets_none_of_the_old_answers(stack):
    """Two certificates with one CN and one client id: the `ops` one connects (its WRITE scope is
    cached at CONNECT and by its publish), then the other takes the session over. The cache is
    keyed by username and client id: nothing the `ops` certificate was answered may reach it."""
    ops = stack.device("TwinOps", [(CN, "Twin"), (OU, "ops")], client_id="twin").connect()
    assert ops.publish("plant/valve/set", "x") == 0
    plain = stack.device("TwinPlain", [(CN, "Twin")], client_id="twin").connect()
    assert ops.disconnected(5), "premise: the session was taken over"
    assert plain.publish("plant/valve/set", "y") == 0x87, "the takeover was served the ops certificate's answer"
    assert plain.publish("/device/Twin/t", "y") == 0


OPS_READ_RULES = """\
superusers: [admin]
certificates:
  ops:
    match: {OU: ops}
    rules:
      - topic: plant/#
        access: readwrite
patterns:
  - topic: /device/%u/#
    access: readwrite
"""


def _resume(dev, clean_start: bool):
    from paho.mqtt.properties import Properties
    from paho.mqtt.packettypes import PacketTypes
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 300
    dev.client.connect("127.0.0.1", dev.broker.port, keepalive=30, clean_start=clean_start, properties=props)
    dev.client.loop_start()
    rc = dev._connected.get(timeout=10)
    assert not rc.is_failure, rc
    return dev


@pytest.fixture(scope="module")
def ops_stack():
    from harness import run_policyd
    s = Stack(identity_mode=True)
    s.daemon.rules.write_text(OPS_READ_RULES)
    run_policyd("reload", "--address", s.daemon.admin_address)
    yield s
    s.close()


def test_a_resumed_session_of_another_certificate_gets_none_of_the_offline_sessions_answers(ops_stack):
    """A persistent session of the `ops` certificate goes offline; a message is checked (READ) for
    the offline session, decided with the certificate it connected with, and cached under its
    username and client id. Another certificate of the same identity resumes the session (no `ops`):
    a delivery to it must be decided for it, not served the offline session's answer."""
    s = ops_stack
    a = _resume(s.device("TwinA", [(CN, "Twin3"), (OU, "ops")], client_id="twin3"), clean_start=True)
    assert a.subscribe("plant/state") == 1
    a.close()
    time.sleep(0.3)
    admin = s.device("admin", [(CN, "admin")], client_id="admin-pub").connect()
    assert admin.publish("plant/state", "m1") == 0    # READ checked for the offline session
    time.sleep(0.3)
    b = _resume(s.device("TwinB", [(CN, "Twin3")], client_id="twin3"), clean_start=False)
    time.sleep(0.3)
    assert admin.publish("plant/state", "m2") == 0
    got = b.received(1.5)
    assert ("plant/state", b"m2") not in got, ("the resumed session was served the offline session's answer", got)
