"""Differential: generated acl_files, a real Mosquitto with `acl_file` against a real Mosquitto
with the plugin and the rules `policyd import-acl` wrote for the same file.

Each seed makes an acl_file of a realistic shape (tests/mosquitto_acl.py: an anonymous
section, device blocks, an observer, %u/%c patterns, deny carve-outs at both levels, +/#/$
filters). On both brokers the same clients (TLS certificates, CN = username; one anonymous
client on a plain loopback listener) subscribe to everything, then each publishes to a sample
of topics. PUBACK and SUBACK codes and every delivery must be equal, and must be what the
acl_file oracle (a port of security_default.c) predicts, so the two brokers cannot agree by
both being wrong.
"""

from __future__ import annotations

import random
import time

import pytest

from harness import Broker, BrokerConfig, Device, PolicyDaemon, free_port, run_policyd
from mosquitto_acl import READ, WRITE, MosquittoAcl, own_topics, realistic_acl, topic_matches_sub

SEEDS = (11, 23, 37)
TOPICS_PER_CLIENT = 30
SETTLE_S = 1.5
NOT_AUTHORIZED = 0x87
FILTERS = ("#", "$app/#", "$pub/#")  # `#` does not reach `$` topics
ANONYMOUS = ""  # the anonymous client's key in results


class AnonymousClient(Device):
    """A paho client without certificate or username, on the broker's plain listener."""

    def __init__(self, broker: Broker, port: int, client_id: str):  # noqa: super() would load a certificate
        import queue
        import threading

        import paho.mqtt.client as mqtt

        self.cn, self.broker, self.port = "anonymous", broker, port
        self.messages, self.disconnects, self._connected = queue.Queue(), queue.Queue(), queue.Queue()
        self._acks, self._lock = {}, threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, flags, rc, props: self._connected.put(rc)
        self.client.on_disconnect = lambda c, u, flags, rc, props: self.disconnects.put(rc)
        self.client.on_message = lambda c, u, msg: self.messages.put((msg.topic, msg.payload))
        self.client.on_publish = lambda c, u, mid, rc, props: self._ack(mid).put(rc)
        self.client.on_subscribe = lambda c, u, mid, rcs, props: self._ack(mid).put(rcs)

    def connect(self, timeout: float = 10) -> "AnonymousClient":
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        rc = self._connected.get(timeout=timeout)
        if rc.is_failure:
            raise ConnectionError(f"anonymous: CONNACK {rc}")
        return self


def plan(seed: int):
    rng = random.Random(seed)
    shape = realistic_acl(rng)
    clients = [*shape.users, ANONYMOUS]
    publishes = []
    for who in clients:  # half on the client's own topics, where its rules and the patterns meet
        mine = own_topics(shape, who)
        publishes += [(who, t) for t in rng.sample(mine, min(len(mine), TOPICS_PER_CLIENT // 2))]
        publishes += [(who, t) for t in rng.sample(shape.topics, TOPICS_PER_CLIENT // 2)]
    rng.shuffle(publishes)
    return shape, clients, publishes


def run_scenario(broker: Broker, plain_port: int, shape, clients, publishes) -> dict:
    opened = {}
    try:
        for who in clients:
            cid = shape.clientids[who]
            opened[who] = (AnonymousClient(broker, plain_port, cid) if who == ANONYMOUS
                           else Device(broker, who, client_id=cid)).connect()
        subacks = {(who, f): opened[who].subscribe(f) for who in clients for f in FILTERS}
        pubacks = {}
        for n, (who, topic) in enumerate(publishes):
            pubacks[(who, topic)] = opened[who].publish(topic, f"{n}")
        time.sleep(SETTLE_S)
        received = {who: sorted(opened[who].received(0.05)) for who in clients}
    finally:
        for client in opened.values():
            client.close()
    return {"suback": subacks, "puback": pubacks, "received": received}


def expected(shape, clients, publishes) -> dict:
    """What Mosquitto's acl_file means, from the oracle."""
    oracle = MosquittoAcl.parse(shape.text)

    def allowed(who, topic, access):
        return oracle.decide(who or None, shape.clientids[who], topic, access)

    pubacks = {(who, t): 0 if allowed(who, t, WRITE) else NOT_AUTHORIZED for who, t in publishes}
    received = {who: [] for who in clients}
    for n, (sender, topic) in enumerate(publishes):
        if pubacks[(sender, topic)]:
            continue
        for who in clients:
            copies = sum(topic_matches_sub(f, topic) for f in FILTERS)
            if copies and allowed(who, topic, READ):
                received[who] += [(topic, f"{n}".encode())] * copies
    return {"puback": pubacks, "received": {who: sorted(r) for who, r in received.items()}}


@pytest.fixture(scope="module", params=SEEDS)
def outcome(request, workdir, pki):
    seed = request.param
    shape, clients, publishes = plan(seed)
    base = workdir / f"seed{seed}"
    base.mkdir(mode=0o755)
    acl = base / "acl"
    acl.write_text(shape.text)
    acl.chmod(0o644)
    rules = base / "imported.yaml"
    run_policyd("import-acl", str(acl), "-o", str(rules))

    results = {"shape": shape, "clients": clients, "publishes": publishes, "rules": rules.read_text()}
    plain_port = free_port()
    listener = f"listener {plain_port} 127.0.0.1\nallow_anonymous true\n"
    mosq_dir = base / "acl-broker"
    mosq_dir.mkdir(mode=0o755)
    broker = Broker(mosq_dir, pki, None, BrokerConfig(plugin=False, acl_file=str(acl), extra=listener)).start()
    try:
        results["mosquitto"] = run_scenario(broker, plain_port, shape, clients, publishes)
    finally:
        broker.stop()

    plain_port = free_port()
    listener = f"listener {plain_port} 127.0.0.1\nallow_anonymous true\n"
    ours_dir = base / "policyd-broker"
    ours_dir.mkdir(mode=0o755)
    daemon = PolicyDaemon(ours_dir, results["rules"]).start()
    broker = Broker(ours_dir, pki, daemon, BrokerConfig(extra=listener)).start()
    try:
        results["policyd"] = run_scenario(broker, plain_port, shape, clients, publishes)
    finally:
        broker.stop()
        daemon.stop()
    return results


def test_the_oracle_is_what_mosquitto_does(outcome):
    # so that agreement below is agreement with Mosquitto, and the answers are not all alike
    want = expected(outcome["shape"], outcome["clients"], outcome["publishes"])
    got = outcome["mosquitto"]
    assert got["puback"] == want["puback"], outcome["shape"].text
    assert got["received"] == want["received"], outcome["shape"].text
    assert {0, NOT_AUTHORIZED} <= set(got["puback"].values())
    assert sum(map(len, got["received"].values())) > 0


def test_every_publish_gets_the_same_answer(outcome):
    assert outcome["policyd"]["puback"] == outcome["mosquitto"]["puback"], outcome["rules"]


def test_every_subscription_gets_the_same_answer(outcome):
    assert outcome["policyd"]["suback"] == outcome["mosquitto"]["suback"], outcome["rules"]


def test_every_client_receives_the_same_messages(outcome):
    ours, theirs = outcome["policyd"]["received"], outcome["mosquitto"]["received"]
    for who in outcome["clients"]:
        assert ours[who] == theirs[who], (who or "anonymous", outcome["rules"])
