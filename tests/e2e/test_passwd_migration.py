"""Password clients keep their passwords: a real `mosquitto_passwd` file, a real Mosquitto with
`password_file`, and a real Mosquitto with the plugin in identity mode and the `passwords:`
section `policyd import-passwd` made from the same file. Every CONNECT must get the same answer.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

import socket

from harness import (Broker, BrokerConfig, PolicyDaemon, Pki, broker_version, free_port, make_workdir, password_listener,
                     run_policyd, wait_for)

# Mosquitto 2.0 drops an entry it cannot decode and starts; 2.1 refuses to start with it.
PLAIN_LINE_DROPPED = broker_version() < (2, 1, 0)

USERS = {"alice": ("sha512-pbkdf2", "correct horse"), "bob": ("sha512", "hunter2 with spaces")}
ATTEMPTS = [("alice", "correct horse"), ("alice", "correct horsE"), ("bob", "hunter2 with spaces"),
            ("bob", "hunter2"), ("carol", "carol-plaintext-pw"), ("mallory", "correct horse")]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def connack(port: int, ca, username: str, password: str) -> int:
    import paho.mqtt.client as mqtt
    import queue

    done: "queue.Queue" = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pw-{username}", protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(ca))
    client.username_pw_set(username, password)
    client.on_connect = lambda c, u, flags, rc, props: done.put(rc.value)
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    try:
        return done.get(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.fixture(scope="module")
def answers():
    work = make_workdir()
    pki = Pki(work / "pki").issue_base()
    pwfile = work / "passwd"
    for n, (user, (algorithm, password)) in enumerate(USERS.items()):
        subprocess.run(["mosquitto_passwd", *(["-c"] if n == 0 else []), "-H", algorithm, "-b", str(pwfile),
                        user, password], check=True)
    if PLAIN_LINE_DROPPED:
        with open(pwfile, "a") as fh:
            fh.write("carol:carol-plaintext-pw\n")  # a plain-text line: Mosquitto 2.0 drops it at start
    pwfile.chmod(0o644)
    out = {"passwd": pwfile.read_text()}

    section = work / "passwords.yaml"
    proc = run_policyd("import-passwd", str(pwfile), "-o", str(section))
    out["import"] = proc
    out["section"] = section

    mosq_dir = work / "mosquitto"
    mosq_dir.mkdir(mode=0o755)
    port = free_port()
    config = BrokerConfig(plugin=False, use_identity_as_username=False,
                          extra=f"password_file {pwfile}\n" + password_listener(pki, port))
    broker = Broker(mosq_dir, pki, None, config).start()
    try:
        wait_for(lambda: port_open(port), 10, "the password listener")
        out["mosquitto"] = {a: connack(port, pki.ca, *a) for a in ATTEMPTS}
    finally:
        broker.stop()

    ours_dir = work / "policyd"
    ours_dir.mkdir(mode=0o755)
    rules = f"identity:\n  source: cn\n  issuers: [{pki.ca}]\n" + section.read_text() + \
        "patterns:\n  - {topic: dev/%u/#, access: readwrite}\n"
    daemon = PolicyDaemon(ours_dir, rules).start()
    port = free_port()
    config = BrokerConfig(use_identity_as_username=False,
                          extra="auth_opt_policyd_identity cert\n" + password_listener(pki, port))
    broker = Broker(ours_dir, pki, daemon, config).start()
    try:
        wait_for(lambda: port_open(port), 10, "the password listener")
        wait_for(lambda: "Watch stream opened" in daemon.log(), 10, "the plugin's link to policyd")
        out["policyd"] = {a: connack(port, pki.ca, *a) for a in ATTEMPTS}
    finally:
        broker.stop()
        daemon.stop()
        out["daemon_log"] = daemon.log()
    yield out
    shutil.rmtree(work, ignore_errors=True)


def test_mosquitto_passwd_made_both_hash_forms(answers):
    hashes = dict(line.split(":", 1) for line in answers["passwd"].splitlines())
    assert hashes["alice"].startswith("$7$101$") and hashes["bob"].startswith("$6$")


def test_import_keeps_both_forms_and_says_what_it_left_out(answers):
    text = answers["section"].read_text()
    assert '"alice": "$7$' in text and '"bob": "$6$' in text and "carol" not in text
    assert ("carol" in answers["import"].stderr and "left out" in answers["import"].stderr) == PLAIN_LINE_DROPPED
    assert "carol-plaintext-pw" not in answers["import"].stderr + answers["import"].stdout
    assert answers["section"].stat().st_mode & 0o777 == 0o600


def test_every_connect_gets_the_answer_mosquitto_gives(answers):
    assert answers["policyd"] == answers["mosquitto"], answers["daemon_log"][-3000:]
    accepted = {a for a, rc in answers["mosquitto"].items() if rc == 0}
    assert accepted == {("alice", "correct horse"), ("bob", "hunter2 with spaces")}


def test_passwords_never_reach_the_log(answers):
    for _, password in ATTEMPTS:
        assert password not in answers["daemon_log"]
