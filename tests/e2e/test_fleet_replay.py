"""Kicks issued while a broker's Watch stream is down are not lost, with real parts: a
3-member etcd cluster, two daemons following it, brokers on the real plugin.

A broker reopening its stream names the last generation it received; the daemon it reaches
(restarted, or another one) works out from etcd's history what was revoked since then, or,
when it cannot prove that (history compacted), has the broker disconnect every client."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from types import SimpleNamespace

import pytest

from etcd_harness import FleetDaemon, FleetStack, revision_of
from harness import Broker, BrokerConfig, Device, free_port, wait_for

ADMINISTRATIVE_ACTION = 0x98

RULES = """\
patterns:
  - topic: /device/%u/#
    access: readwrite
"""


class TcpFleetDaemon(FleetDaemon):
    """A fleet daemon on a loopback TCP port: several of them make one plugin target."""

    def __init__(self, workdir, source, *extra):
        self.port = free_port()
        super().__init__(workdir, source, "--admin-listen", f"unix:{workdir / 'run' / 'admin.sock'}", *extra)
        self.admin_socket = self.sock_dir / "admin.sock"
        self.socket = self.admin_socket  # what start() waits for

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class Stack(FleetStack):
    def __init__(self):
        super().__init__("policyd-replay-", RULES)
        self.daemons = [TcpFleetDaemon(self.dir / n, self.source).start() for n in ("a", "b")]

    def broker(self, *daemons: FleetDaemon) -> Broker:
        sub = self.dir / f"broker{len(self.brokers)}"
        sub.mkdir(mode=0o755)
        target = "ipv4:" + ",".join(d.address for d in daemons)
        config = BrokerConfig(extra=f"auth_opt_policyd_broker_id {sub.name}\n")
        broker = Broker(sub, self.pki, SimpleNamespace(address=target), config).start()
        broker.name = sub.name
        self.brokers.append(broker)
        return broker

    def device(self, broker: Broker, cn: str) -> Device:
        dev = Device(broker, cn, client_id=f"{cn}-{broker.port}").connect()
        self.opened.append(dev)
        # right after a daemon restart the broker's check channel may still be backing off
        # (checks fail closed meanwhile): wait for the first answer
        wait_for(lambda: dev.publish(f"/device/{cn}/t", b"before") == 0, 10, f"{cn} allowed", interval=0.2)
        return dev


@pytest.fixture(scope="module")
def stack():
    s = Stack()
    yield s
    s.close()


def watching(broker: Broker, daemons, timeout: float = 10) -> FleetDaemon:
    """The daemon holding this broker's Watch stream now."""
    def holders():
        return [d for d in daemons if d.log().count(f"Watch stream opened by broker '{broker.name}'")
                > d.log().count(f"Watch stream of broker '{broker.name}' closed")]
    wait_for(lambda: len(holders()) == 1, timeout, "one daemon holding the Watch stream", interval=0.1)
    return holders()[0]


def test_a_revoke_while_the_stream_is_down_is_replayed_by_the_restarted_daemon(stack):
    a = stack.daemons[0]
    broker = stack.broker(a)
    victim, keeper = stack.device(broker, "Victim"), stack.device(broker, "Keeper")
    watching(broker, [a])
    a.stop(signal.SIGKILL)
    revision = revision_of(stack.cli("device", "revoke", "Victim", "--reason", "stolen"))
    time.sleep(1.0)  # nobody tells this broker: its only daemon is down
    assert not victim.disconnected(0)
    a.start()  # a new process: it never applied the revoke as a change, it started with it in force
    assert victim.disconnects.get(timeout=15).value == ADMINISTRATIVE_ACTION
    assert not keeper.disconnected(1.0)  # a proven replay: only what was revoked
    assert keeper.publish("/device/Keeper/t", b"after") == 0
    assert "replaying 1 kicks" in a.log() and "cannot replay" not in a.log()
    assert revision == a.revision()


def test_the_other_daemon_takes_over_the_stream_and_replays_the_revoke(stack):
    a, b = stack.daemons
    broker = stack.broker(a, b)
    victim, keeper = stack.device(broker, "Victim2"), stack.device(broker, "Keeper2")
    holder = watching(broker, stack.daemons)
    other = b if holder is a else a
    # the holder stops answering without closing anything; the revoke lands meanwhile
    holder.proc.send_signal(signal.SIGSTOP)
    try:
        revision = revision_of(stack.cli("device", "revoke", "Victim2"))
        wait_for(lambda: other.revision() == revision, 10, "the other daemon at the revoke")
        time.sleep(0.5)
        assert not victim.disconnected(0)  # the broker hears nothing: its stream is on the stopped daemon
    finally:
        holder.proc.send_signal(signal.SIGKILL)
        holder.proc.wait()
        holder.proc = None
    assert victim.disconnects.get(timeout=15).value == ADMINISTRATIVE_ACTION
    assert watching(broker, [other]) is other
    assert not keeper.disconnected(1.0)
    holder.start()


def test_when_etcd_compacted_the_missed_revisions_every_client_is_disconnected(stack):
    a = stack.daemons[0]
    broker = stack.broker(a)
    victim, bystander = stack.device(broker, "Victim3"), stack.device(broker, "Bystander3")
    watching(broker, [a])
    a.stop(signal.SIGKILL)
    revision = revision_of(stack.cli("device", "revoke", "Victim3"))
    compact = subprocess.run(["etcdctl", "--endpoints", stack.etcd.source_hosts, "compact", str(revision)],
                             capture_output=True, text=True, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
    assert compact.returncode == 0, compact.stderr
    a.start()
    # the revision this broker knew is gone from etcd: nothing proves which kicks it missed
    for dev in (victim, bystander):
        assert dev.disconnects.get(timeout=15).value == ADMINISTRATIVE_ACTION
    assert "cannot replay" in a.log()
    again = stack.device(broker, "Bystander3")  # reconnects and is checked under the policy in force
    assert again.publish("/device/Bystander3/t", b"after") == 0
    broker.stop()  # its log reaches the file when it exits
    assert "cannot prove it replayed every kick" in broker.log()


def test_a_rollback_too_big_for_one_etcd_transaction_is_refused_and_publishes_nothing(stack):
    """A rollback must be one transaction (a device revoked at that revision must never be
    allowed half-way); etcd caps a transaction's operations (--max-txn-ops, 128 by default)."""
    from policyd.fleet.etcd import Etcd, EtcdSource
    from policyd.fleet.publish import Fleet

    fleet = Fleet(Etcd(EtcdSource.parse(stack.source)))
    try:
        for i in range(130):
            revision = fleet.device_set(f"Bulk{i:03d}", [("/bulk/%u", "write")])
    finally:
        fleet.etcd.close()
    rules = stack.dir / "rules.yaml"
    head = revision_of(stack.cli("push", str(rules), "--expect-revision", str(revision)))
    for extra in ((), ("--max-txn-ops", "1000")):  # our own count, then etcd's own refusal
        refused = stack.cli("rollback", "--to", str(revision), *extra)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "nothing published" in refused.stderr and "--max-txn-ops" in refused.stderr
        entries = re.search(r"(\d+) device entries", refused.stderr)
        assert entries and int(entries.group(1)) >= 130, refused.stderr  # with the earlier tests' revokes
    history = stack.cli("history", "--limit", "1")
    assert history.stdout.split()[0] == str(head)  # nothing was written
