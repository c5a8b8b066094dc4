"""Compatibility: real Mosquitto with `acl_file` vs real Mosquitto + plugin + policyd
with the same file converted by `policyd import-acl`.

Both brokers get the same devices (TLS certificates, CN = username), the same
subscriptions and the same publishes in the same order; the test compares PUBACK
codes, SUBACK codes and what every subscriber receives, for both orders import-acl
writes. With `order: mosquitto` (the default) everything is equal. With `--order
deny-first` the only differences allowed are those docs/rules.md lists, and each
one is asserted explicitly:
  * a SUBSCRIBE no rule covers is refused at once (SUBACK 0x87) by policyd, while
    acl_file grants it and filters at delivery, so a filter reaching wider than
    the client's read rules (Device999's `/device/#`, `fleet/#`) still delivers
    what the client may read under Mosquitto, and nothing under policyd.
"""

from __future__ import annotations

import time

import pytest

from harness import Broker, BrokerConfig, Device, PolicyDaemon, run_policyd

NOT_AUTHORIZED = 0x87
SETTLE_S = 1.5  # after the last publish, how long we collect deliveries

ACL_FILE = """\
# compatibility suite: an acl_file as operators write them
user Device123
topic readwrite fleet/Device123/#
topic deny fleet/Device123/locked
topic read fleet/broadcast/#
topic write literal/%u/x

user watcher
topic read fleet/#
topic write fleet/#
topic write cmd/#

user Device999
topic fleet/Device999/status

pattern readwrite /device/%u/#
pattern deny /device/%u/secret
pattern read cmd/%c/#
"""

CLIENTS = ("Device123", "Device999", "watcher")

SUBSCRIPTIONS = [
    ("watcher", "fleet/#"),
    ("Device123", "/device/Device123/#"),
    ("Device123", "fleet/Device123/#"),
    ("Device123", "fleet/broadcast/#"),
    ("Device123", "cmd/Device123-client/#"),
    ("Device999", "/device/#"),          # wider than its read rules
    ("Device999", "fleet/#"),            # no read rule at all
    ("Device999", "fleet/Device999/status"),
]

PUBLISHES = [
    ("Device123", "fleet/Device123/t"),
    ("Device123", "fleet/Device123/locked"),      # user deny
    ("Device123", "/device/Device123/t"),         # pattern allow
    ("Device123", "/device/Device123/secret"),    # pattern deny
    ("Device123", "/device/Device999/t"),         # another device's subtree
    ("Device123", "literal/Device123/x"),         # %u in a topic line is literal...
    ("Device123", "literal/%u/x"),                # ...so only this one is allowed
    ("Device123", "fleet/broadcast/x"),           # read only
    ("Device999", "/device/Device999/t"),
    ("Device999", "/device/Device123/t"),
    ("Device999", "fleet/Device999/status"),      # `topic` without access: readwrite
    ("watcher", "fleet/Device123/locked"),        # allowed for watcher, never delivered to Device123
    ("watcher", "fleet/broadcast/news"),
    ("watcher", "cmd/Device123-client/reboot"),   # %c pattern on the receiving side
    ("watcher", "cmd/Device999-client/reboot"),
    ("watcher", "/device/Device123/t"),
]


def run_scenario(broker: Broker) -> dict:
    devices = {cn: Device(broker, cn, client_id=f"{cn}-client").connect() for cn in CLIENTS}
    try:
        subacks = {(cn, f): devices[cn].subscribe(f) for cn, f in SUBSCRIPTIONS}
        pubacks = {(cn, t): devices[cn].publish(t, f"{cn}:{t}") for cn, t in PUBLISHES}
        time.sleep(SETTLE_S)
        received = {cn: sorted(devices[cn].received(0.05)) for cn in CLIENTS}  # already queued
    finally:
        for dev in devices.values():
            dev.close()
    return {"suback": subacks, "puback": pubacks, "received": received}


@pytest.fixture(scope="module", params=["mosquitto", "deny-first"])
def results(request, workdir, pki):
    workdir = workdir / request.param
    workdir.mkdir(mode=0o755)
    acl = workdir / "acl"
    acl.write_text(ACL_FILE)
    acl.chmod(0o644)
    rules = workdir / "imported.yaml"
    proc = run_policyd("import-acl", str(acl), "-o", str(rules), "--order", request.param)
    assert "literal/%u/x" in proc.stderr and "kept literal" in proc.stderr  # the %u warning

    out = {"order": request.param}
    mosq_dir = workdir / "acl-broker"
    mosq_dir.mkdir(mode=0o755)
    broker = Broker(mosq_dir, pki, None, BrokerConfig(plugin=False, acl_file=str(acl))).start()
    try:
        out["mosquitto"] = run_scenario(broker)
    finally:
        broker.stop()

    ours_dir = workdir / "policyd-broker"
    ours_dir.mkdir(mode=0o755)
    daemon = PolicyDaemon(ours_dir, rules.read_text()).start()
    broker = Broker(ours_dir, pki, daemon, BrokerConfig()).start()
    try:
        out["policyd"] = run_scenario(broker)
    finally:
        broker.stop()
        daemon.stop()
    out["rules"] = rules.read_text()
    return out


def test_every_publish_gets_the_same_answer(results):
    mosq, ours = results["mosquitto"]["puback"], results["policyd"]["puback"]
    assert ours == mosq
    # and the answers are the ones the acl_file means (so equality is not two identical failures)
    denied = {k for k, code in mosq.items() if code == NOT_AUTHORIZED}
    assert denied == {
        ("Device123", "fleet/Device123/locked"), ("Device123", "/device/Device123/secret"),
        ("Device123", "/device/Device999/t"), ("Device123", "literal/Device123/x"),
        ("Device123", "fleet/broadcast/x"), ("Device999", "/device/Device123/t"),
        ("watcher", "/device/Device123/t"),
    }
    assert set(mosq.values()) == {0, NOT_AUTHORIZED}


def test_subscriptions_differ_only_where_documented(results):
    mosq, ours = results["mosquitto"]["suback"], results["policyd"]["suback"]
    assert set(mosq.values()) == {1}  # acl_file grants every SUBSCRIBE
    if results["order"] == "mosquitto":
        assert ours == mosq
        return
    refused_by_policyd = {k for k, code in ours.items() if code == NOT_AUTHORIZED}
    assert refused_by_policyd == {("Device999", "/device/#"), ("Device999", "fleet/#")}
    assert all(code == 1 for k, code in ours.items() if k not in refused_by_policyd)


def test_deliveries_are_the_same_except_through_refused_subscriptions(results):
    mosq, ours = results["mosquitto"]["received"], results["policyd"]["received"]
    if results["order"] == "mosquitto":
        assert ours == mosq
    for cn in ("Device123", "watcher"):
        assert ours[cn] == mosq[cn], cn
    # Device999's `/device/#` and `fleet/#`: acl_file grants them and lets the messages it may read
    # through at delivery (its own status arrives twice, once per matching subscription);
    # policyd refused both at SUBSCRIBE, so only the exact subscription delivers.
    status = ("fleet/Device999/status", b"Device999:fleet/Device999/status")
    assert mosq["Device999"] == [("/device/Device999/t", b"Device999:/device/Device999/t"), status, status]
    if results["order"] == "deny-first":
        assert ours["Device999"] == [status]


def test_delivery_is_filtered_by_deny_rules_on_both(results):
    for name in ("mosquitto", "policyd"):
        got = results[name]["received"]
        assert ("fleet/Device123/locked", b"watcher:fleet/Device123/locked") in got["watcher"], name
        topics_123 = [t for t, _ in got["Device123"]]
        assert "fleet/Device123/locked" not in topics_123, name          # user deny at delivery
        assert "cmd/Device123-client/reboot" in topics_123, name         # %c pattern
        assert "cmd/Device999-client/reboot" not in topics_123, name
        assert "fleet/broadcast/news" in topics_123, name
        assert topics_123.count("/device/Device123/t") == 1, name        # own publish, once
