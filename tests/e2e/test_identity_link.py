"""The trusted link: plugin and daemon over TCP with mutual TLS (issue 6, docs/identity.md).

policyd listens on 127.0.0.1:PORT with --tls-ca/--tls-cert/--tls-key and
accepts only clients whose certificate its link CA signed; the plugin
(auth_opt_policyd_tls_*) verifies the daemon the same way. A broker with a
certificate of another CA, or with no TLS at all, gets no answers: its
clients are refused at CONNECT (identity mode), fail closed.
"""

from __future__ import annotations

import os
import pwd
import queue
import shutil

import pytest
from harness import (BROKER_USER, Broker, BrokerConfig, Device, Pki, PolicyDaemon, free_port, make_workdir,
                     run_policyd)

NOT_AUTHORIZED = 0x87
RULES = """\
patterns:
  - topic: /device/%u/#
    access: readwrite
"""


class TcpDaemon(PolicyDaemon):
    """`policyd serve` on loopback TCP with mutual TLS; admin on a unix socket."""

    def __init__(self, workdir, link_dir):
        self.port = free_port()
        admin = workdir / "run" / "policyd-admin.sock"
        super().__init__(workdir, RULES, "--listen", f"127.0.0.1:{self.port}", "--admin-listen", f"unix:{admin}",
                         "--tls-ca", str(link_dir / "ca.pem"), "--tls-cert", str(link_dir / "server.pem"),
                         "--tls-key", str(link_dir / "server.key"))
        self.socket = admin  # what start() waits for: the TCP port has no file

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def readable_by_broker(*paths):
    """Mosquitto reads the link key after dropping to its user."""
    if os.geteuid() == 0:
        uid = pwd.getpwnam(BROKER_USER).pw_uid
        for path in paths:
            os.chown(path, uid, -1)


def tls_options(directory, name: str) -> str:
    return (f"auth_opt_policyd_tls_ca {directory / 'ca.pem'}\n"
            f"auth_opt_policyd_tls_cert {directory / (name + '.pem')}\n"
            f"auth_opt_policyd_tls_key {directory / (name + '.key')}")


@pytest.fixture(scope="module")
def link():
    work = make_workdir()
    pki = Pki(work / "pki").issue_base()
    link_dir, rogue_dir = work / "link", work / "rogue"
    run_policyd("certs", "ca", "--dir", str(link_dir), "--cn", "policyd link CA")
    run_policyd("certs", "server", "--dir", str(link_dir), "--cn", "policyd", "--san", "127.0.0.1")
    run_policyd("certs", "client", "--dir", str(link_dir), "--cn", "broker1")
    run_policyd("certs", "ca", "--dir", str(rogue_dir), "--cn", "rogue CA")
    run_policyd("certs", "client", "--dir", str(rogue_dir), "--cn", "broker1")
    for directory in (link_dir, rogue_dir):
        directory.chmod(0o755)
        readable_by_broker(directory / "broker1.key")
    # The rogue broker trusts the real link CA (it can verify the daemon) but holds a rogue certificate.
    shutil.copy(link_dir / "ca.pem", rogue_dir / "ca.pem")
    daemon = TcpDaemon(work, link_dir).start()
    yield dict(work=work, pki=pki, link_dir=link_dir, rogue_dir=rogue_dir, daemon=daemon)
    daemon.stop()
    shutil.rmtree(work, ignore_errors=True)


def broker_with(link, extra: str, name: str) -> Broker:
    work = link["work"] / name
    work.mkdir()
    work.chmod(0o755)
    config = BrokerConfig(use_identity_as_username=False, extra="auth_opt_policyd_identity cert\n" + extra)
    return Broker(work, link["pki"], link["daemon"], config).start()


def test_checks_and_connects_flow_over_mutual_tls(link):
    broker = broker_with(link, tls_options(link["link_dir"], "broker1"), "good")
    try:
        dev = Device(broker, "Device123").connect()
        try:
            assert dev.publish("/device/Device123/t", "over mTLS") == 0
            assert dev.publish("/device/Device999/t", "no") == NOT_AUTHORIZED
        finally:
            dev.close()
    finally:
        broker.stop()


@pytest.mark.parametrize("name, extra", [
    ("rogue-certificate", "rogue"),
    ("plaintext", None),
])
def test_a_broker_without_a_link_certificate_gets_no_answers(link, name, extra):
    options = tls_options(link["rogue_dir"], "broker1") if extra else ""
    broker = broker_with(link, options, name)
    try:
        dev = Device(broker, "Device123", client_id=f"Device123-{name}")
        # Refused as retryable: no CONNACK at all (2.0: closed; 2.1: left waiting), never "not authorized".
        with pytest.raises((queue.Empty, ConnectionError)) as refused:
            dev.connect(timeout=3)
        dev.close()
        assert "Not authorized" not in str(refused.value)
    finally:
        broker.stop()
    assert "refused as retryable: no answer from policyd (unavailable" in broker.log()


def test_tls_flags_go_together(link):
    proc = run_policyd("serve", "--rules", str(link["daemon"].rules), "--listen", "127.0.0.1:1",
                       "--tls-ca", str(link["link_dir"] / "ca.pem"), check=False)
    assert proc.returncode == 2 and "go together" in proc.stderr


def test_plugin_refuses_to_start_with_an_unreadable_link_key(link):
    work = link["work"] / "badkey"
    work.mkdir()
    work.chmod(0o755)
    extra = tls_options(link["link_dir"], "broker1").replace("broker1.key", "missing.key")
    broker = Broker(work, link["pki"], link["daemon"], BrokerConfig(extra=extra))
    with pytest.raises(RuntimeError):
        broker.start()
    broker.stop()
    assert "mutual TLS to policyd" in broker.log() and "missing.key" in broker.log()
