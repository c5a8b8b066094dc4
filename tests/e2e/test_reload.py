"""Hot reload and revocation with the real stack: mosquitto + plugin + policyd + MQTT clients.

Two stacks: one whose daemon watches its rules file (edits take effect by
themselves) and one started with --no-watch, so that SIGHUP and `policyd
reload` are each proven to work on their own.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import threading

import grpc
import pytest
from harness import (
    BROKER_USER,
    Broker,
    BrokerConfig,
    Device,
    PolicyDaemon,
    run_policyd,
    wait_for,
)

NOT_AUTHORIZED = 0x87
ADMINISTRATIVE_ACTION = 0x98

# Every test starts from this file; {extra} lets a test add identities.
BASE = """\
superusers: [admin]
users:
  Keeper:
    - topic: /device/%u/#
      access: readwrite
  Revoked:
    - topic: /device/%u/#
      access: readwrite
{extra}
groups:
  readers:
    members: [Reader]
    rules:
      - topic: /device/+/#
        access: read
patterns:
  - topic: /shared/%u/#
    access: readwrite
"""
WITHOUT_REVOKED = BASE.replace("""  Revoked:
    - topic: /device/%u/#
      access: readwrite
""", "")

# A rules file that must be refused, and the line its first error names.
INVALID = {
    "syntax-error": ("users:\n  Keeper:\n    - topic: [unclosed\n", None),
    "unknown-key": (BASE.format(extra="") + "colour: blue\n", len(BASE.format(extra="").splitlines()) + 1),
    "bad-filter": (BASE.format(extra="").replace("/device/%u/#", "/device/#/%u", 1), 4),
    "empty-file": ("", None),
}


def rules(text: str = BASE, extra: str = "") -> str:
    return text.format(extra=extra)


class Stack:
    def __init__(self, workdir, pki, watch: bool):
        self.daemon = PolicyDaemon(workdir, rules(), *([] if watch else ["--no-watch"])).start()
        # Mosquitto flushes a log file after every line (its stdout is block-buffered).
        self.live_log = workdir / "mosquitto-live.log"
        self.live_log.touch()
        if os.geteuid() == 0:
            shutil.chown(self.live_log, BROKER_USER)
        self.broker = Broker(workdir, pki, self.daemon,
                             BrokerConfig(extra=f"log_dest file {self.live_log}")).start()
        self.opened: list[Device] = []

    def broker_log(self) -> str:
        return self.live_log.read_text(errors="replace")

    def device(self, cn: str) -> Device:
        dev = Device(self.broker, cn, client_id=f"{cn}-{len(self.opened)}").connect()
        self.opened.append(dev)
        return dev

    def status(self) -> str:  # exits 1 while the last reload is rejected
        return run_policyd("status", "--address", self.daemon.admin_address, check=False).stdout

    def generation(self) -> int:
        return int(re.search(r"generation: (\d+)", self.status()).group(1))

    def reload(self) -> None:
        run_policyd("reload", "--address", self.daemon.admin_address)

    def reset(self) -> None:
        """The base rules, in force, before each test."""
        for dev in self.opened:
            dev.close()
        self.opened.clear()
        self.daemon.rules.write_text(rules())
        self.reload()

    def stop(self) -> None:
        for dev in self.opened:
            dev.close()
        self.broker.stop()
        self.daemon.stop()


@pytest.fixture(scope="module")
def stacks(workdir, pki):
    made: dict[str, Stack] = {}
    for name, watch in (("watching", True), ("manual", False)):
        sub = workdir / name
        sub.mkdir(mode=0o755)
        made[name] = Stack(sub, pki, watch)
    yield made
    for stack in made.values():
        stack.stop()


@pytest.fixture
def watching(stacks):
    stacks["watching"].reset()
    return stacks["watching"]


@pytest.fixture
def manual(stacks):
    stacks["manual"].reset()
    return stacks["manual"]


def apply(stack: Stack, trigger: str, text: str) -> None:
    """Put `text` in force through one trigger."""
    generation = stack.generation()
    stack.daemon.rules.write_text(text)
    if trigger == "sighup":
        stack.daemon.proc.send_signal(signal.SIGHUP)
    elif trigger == "reload":
        stack.reload()
    wait_for(lambda: stack.generation() > generation, 10, f"reload by {trigger}")


def no_disconnect(dev: Device, wait: float) -> bool:
    try:
        dev.disconnects.get(timeout=wait)
        return False
    except queue.Empty:
        return True


# --- revocation --------------------------------------------------------------

@pytest.mark.parametrize("trigger", ["file-edit", "sighup", "reload"])
def test_removed_identity_is_refused_and_disconnected(stacks, trigger):
    stack = stacks["watching" if trigger == "file-edit" else "manual"]
    stack.reset()
    revoked, keeper = stack.device("Revoked"), stack.device("Keeper")
    assert revoked.publish("/device/Revoked/t", b"before") == 0
    assert revoked.subscribe("/device/Revoked/#") == 1
    assert keeper.publish("/device/Keeper/t", b"before") == 0

    apply(stack, trigger, rules(WITHOUT_REVOKED))

    reason = revoked.disconnects.get(timeout=10)
    assert reason.value == ADMINISTRATIVE_ACTION
    assert "policyd: disconnecting 1 client(s): the new policy took access from" in stack.broker_log()
    again = stack.device("Revoked")
    assert again.publish("/device/Revoked/t", b"after") == NOT_AUTHORIZED
    assert again.subscribe("/device/Revoked/#") == NOT_AUTHORIZED
    # The identity that kept its rules was not touched.
    assert no_disconnect(keeper, 0.5)
    assert keeper.publish("/device/Keeper/t", b"after") == 0


def test_unrelated_change_kicks_nobody(manual):
    keeper, revoked, reader = manual.device("Keeper"), manual.device("Revoked"), manual.device("Reader")
    before, log_start = manual.generation(), len(manual.broker_log())
    # A new identity, another pattern, a reader rule added: nobody loses anything.
    text = rules(extra="  Newcomer:\n    - topic: /device/%u/#\n      access: readwrite\n").replace(
        "patterns:\n", "patterns:\n  - topic: /more/%u/#\n    access: read\n")
    apply(manual, "reload", text)
    generation = manual.generation()
    assert generation > before
    # The broker heard of the reload (so hearing nothing else means no kick was sent).
    wait_for(lambda: f"policy generation {generation} announced" in manual.broker_log(), 10,
             "the Watch event on the broker")
    for dev in (keeper, revoked, reader):
        assert no_disconnect(dev, 0.3), dev.cn
    assert revoked.publish("/device/Revoked/t", b"still") == 0
    assert "policyd: disconnecting" not in manual.broker_log()[log_start:]


def test_kicked_subscriber_gets_no_more_messages(manual):
    reader, keeper = manual.device("Reader"), manual.device("Keeper")
    assert reader.subscribe("/device/Keeper/#") == 1
    assert keeper.publish("/device/Keeper/t", b"one") == 0
    assert reader.next_message(timeout=5) == ("/device/Keeper/t", b"one")

    apply(manual, "reload", rules().replace("members: [Reader]", "members: []"))

    assert reader.disconnects.get(timeout=10).value == ADMINISTRATIVE_ACTION
    reader.client.loop_stop()  # no automatic reconnect: see what a fresh session gets
    assert keeper.publish("/device/Keeper/t", b"two") == 0
    fresh = manual.device("Reader")
    assert fresh.subscribe("/device/Keeper/#") == NOT_AUTHORIZED
    assert keeper.publish("/device/Keeper/t", b"three") == 0
    assert fresh.received(0.5) == []


# --- last known good ---------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(INVALID))
def test_invalid_file_changes_nothing_and_is_reported(manual, kind):
    text, line = INVALID[kind]
    keeper = manual.device("Keeper")
    before = manual.generation()
    manual.daemon.rules.write_text(text)

    answer = run_policyd("reload", "--address", manual.daemon.admin_address, check=False)

    assert answer.returncode == 1, answer
    assert f"generation {before} stays in force" in answer.stderr
    assert str(manual.daemon.rules) in answer.stderr
    if line:
        assert f"{manual.daemon.rules}:{line}:" in answer.stderr
    status = manual.status()
    assert f"generation: {before}" in status and "last reload failed:" in status
    rejected = [ln for ln in manual.daemon.log().splitlines() if "reload (rpc) rejected" in ln]
    assert rejected and str(manual.daemon.rules) in rejected[-1]
    # Still the old policy, in the broker too.
    assert keeper.publish("/device/Keeper/t", b"still") == 0
    assert keeper.publish("/device/Revoked/t", b"never") == NOT_AUTHORIZED
    assert no_disconnect(keeper, 0.2)


def test_invalid_edit_on_a_watched_file_is_reported_and_recovers(watching):
    keeper = watching.device("Keeper")
    before = watching.generation()
    watching.daemon.rules.write_text(INVALID["bad-filter"][0])
    wait_for(lambda: "last reload failed:" in watching.status(), 10, "the watcher to report")
    assert watching.generation() == before
    assert keeper.publish("/device/Keeper/t", b"still") == 0
    log = [ln for ln in watching.daemon.log().splitlines() if "reload (file-change) rejected" in ln]
    assert len(log) == 1 and f"{watching.daemon.rules}:4" in log[0]

    watching.daemon.rules.write_text(rules())  # the file in force before the edit, byte for byte
    wait_for(lambda: "last reload failed:" not in watching.status(), 10, "the fixed file to load")
    assert watching.generation() == before  # same bytes, same generation: no broker's cache flushed


def test_editor_style_rename_never_loads_a_half_file(watching):
    """Write a temp file in pieces, rename it over the rules: one reload, no error."""
    keeper = watching.device("Keeper")
    before = watching.generation()
    text = rules(WITHOUT_REVOKED)
    tmp = watching.daemon.rules.with_name(".rules.yaml.tmp")
    with open(tmp, "w") as f:
        f.write(text[: len(text) // 2])
        f.flush()
        f.write(text[len(text) // 2:])
    shutil.move(tmp, watching.daemon.rules)
    wait_for(lambda: watching.generation() > before, 10, "the watcher reload")
    assert "last reload failed" not in watching.status()
    assert keeper.publish("/device/Keeper/t", b"x") == 0


# --- many reloads under traffic ----------------------------------------------

def test_fifty_reloads_while_publishing_lose_nothing_and_leak_nothing(manual):
    from policyd.v1 import policy_pb2 as pb
    from policyd.v1 import policy_pb2_grpc as pb_grpc

    publisher, reader = manual.device("Keeper"), manual.device("Reader")
    assert reader.subscribe("/device/+/#") == 1
    variants = [rules(extra=f"  Extra{i}:\n    - topic: /device/%u/#\n      access: readwrite\n")
                for i in range(2)]
    before = manual.generation()
    outcomes: list[bool] = []

    def reload_fifty():
        with grpc.insecure_channel(manual.daemon.admin_address) as channel:
            admin = pb_grpc.AdminStub(channel)
            for i in range(50):
                manual.daemon.rules.write_text(variants[i % 2])
                outcomes.append(admin.Reload(pb.ReloadRequest(), timeout=10).ok)

    reloader = threading.Thread(target=reload_fifty)
    reloader.start()
    allowed_sent, denied_refused, n = [], 0, 0
    while reloader.is_alive() or n < 200:
        allowed = f"/device/Keeper/m{n}"
        assert publisher.publish(allowed, str(n)) == 0, f"allowed publish {n} refused"
        allowed_sent.append(allowed)
        assert publisher.publish(f"/device/Revoked/m{n}", str(n)) == NOT_AUTHORIZED, f"denied publish {n} let through"
        denied_refused += 1
        n += 1
    reloader.join()

    assert outcomes == [True] * 50
    assert manual.generation() >= before + 50
    received = []
    wait_for(lambda: received.extend(reader.received(0.2)) or len(received) >= len(allowed_sent), 20,
             "every allowed message at the reader")
    topics = [t for t, _ in received]
    assert sorted(topics) == sorted(allowed_sent)  # none lost, none duplicated, nothing denied
    assert denied_refused == n
    for dev in (publisher, reader):
        assert no_disconnect(dev, 0.1)
