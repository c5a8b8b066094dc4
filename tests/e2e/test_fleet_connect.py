"""A device revoked in etcd cannot go on using a connection, nor open a new one where the broker
asks the plugin at CONNECT. Real parts: a 3-member etcd cluster, a fleet daemon, two brokers.

- identity mode (`auth_opt_policyd_identity cert`): the broker asks policyd at every CONNECT,
  which refuses a revoked device (CONNACK not authorized);
- broker mode (`use_identity_as_username true`): Mosquitto takes the certificate's CN and asks
  no plugin at CONNECT (handle_connect.c: "Authentication assumed to be cleared"), so the
  CONNECT succeeds; its first check (subscribe, publish, or a delivery) is denied and ends it.
"""

from __future__ import annotations


import pytest

from etcd_harness import FleetDaemon, FleetStack, fleet_cli, revision_of
from harness import Broker, BrokerConfig, Device, wait_for

ADMINISTRATIVE_ACTION = 0x98
NOT_AUTHORIZED = 0x87
IDENTITY_MODE = BrokerConfig(use_identity_as_username=False, extra="auth_opt_policyd_identity cert")

RULES = """\
identity:
  source: cn
  issuers: [{ca}]
patterns:
  - topic: /device/%u/#
    access: readwrite
"""


class Stack(FleetStack):
    def __init__(self):
        super().__init__("policyd-fleet-connect-", lambda pki: RULES.format(ca=pki.ca))
        self.daemon = FleetDaemon(self.dir / "d", self.source).start()
        self.identity_broker = Broker(self.dir / "d", self.pki, self.daemon, IDENTITY_MODE).start()
        sub = self.dir / "broker-mode"
        sub.mkdir(mode=0o755)
        self.broker_mode = Broker(sub, self.pki, self.daemon, BrokerConfig()).start()
        self.daemons = [self.daemon]
        self.brokers = [self.identity_broker, self.broker_mode]

    def device(self, broker: Broker, cn: str, client_id: str) -> Device:
        dev = Device(broker, cn, client_id=client_id)
        self.opened.append(dev)
        return dev.connect()

    def revoke(self, name: str) -> None:
        revision = revision_of(fleet_cli(self.source, "device", "revoke", name, "--reason", "stolen"))
        wait_for(lambda: self.daemon.revision() == revision, 10, "the daemon at the revoke", interval=0.1)


@pytest.fixture(scope="module")
def stack():
    s = Stack()
    yield s
    s.close()


def test_identity_mode_refuses_the_connect_of_a_revoked_device(stack):
    broker = stack.identity_broker
    victim = stack.device(broker, "Revoked1", "r1-a")
    keeper = stack.device(broker, "Keeper1", "k1-a")
    assert victim.publish("/device/Revoked1/t", b"before") == 0
    stack.revoke("Revoked1")
    assert victim.disconnects.get(timeout=10).value == ADMINISTRATIVE_ACTION
    with pytest.raises(ConnectionError, match="Not authorized"):
        stack.device(broker, "Revoked1", "r1-b")
    assert "CONNECT refused" in stack.daemon.log() and "revoked (policyd device revoke)" in stack.daemon.log()
    assert keeper.publish("/device/Keeper1/t", b"after") == 0
    # `device reset` gives the file's rules back: it may connect again
    revision = revision_of(fleet_cli(stack.source, "device", "reset", "Revoked1"))
    wait_for(lambda: stack.daemon.revision() == revision, 10, "the daemon at the reset", interval=0.1)
    assert stack.device(broker, "Revoked1", "r1-c").publish("/device/Revoked1/t", b"back") == 0


def test_broker_mode_ends_a_revoked_devices_connection_at_its_first_check(stack):
    broker = stack.broker_mode
    stack.revoke("Revoked2")
    dev = stack.device(broker, "Revoked2", "r2-a")  # no CONNECT hook: Mosquitto accepts it
    assert dev.subscribe("/device/Revoked2/#") == NOT_AUTHORIZED
    assert dev.disconnects.get(timeout=10).value == ADMINISTRATIVE_ACTION
    fresh = stack.device(broker, "Revoked2", "r2-b")
    assert fresh.publish("/device/Revoked2/t", b"x") == NOT_AUTHORIZED
    assert fresh.disconnects.get(timeout=10).value == ADMINISTRATIVE_ACTION
    assert stack.device(broker, "Keeper2", "k2-a").publish("/device/Keeper2/t", b"x") == 0
