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
