"""The fleet commands and a daemon against an etcd that requires TLS, client certificates and
etcd users (one real member), and what a careless operator or a hand-written key does to it."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from etcd_harness import FleetDaemon, fleet_cli, revision_of
from harness import POLICYD, ROOT, free_port, make_workdir, run_policyd, wait_for

RULES = """\
users:
  Sensor:
    - topic: /device/%u/#
      access: readwrite
"""


class SecureEtcd:
    def __init__(self, work):
        self.work = work
        self.pki = work / "pki"
        self.pki.mkdir()
        run_policyd("certs", "ca", "--dir", str(self.pki))
        run_policyd("certs", "server", "--dir", str(self.pki), "--cn", "localhost", "--san", "127.0.0.1")
        for cn in ("root", "policyd", "stranger"):
            run_policyd("certs", "client", "--dir", str(self.pki), "--cn", cn)
        self.port, peer = free_port(), free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self._log = open(work / "etcd.log", "ab")
        self.proc = subprocess.Popen(
            ["etcd", "--name", "s", "--data-dir", str(work / "data"), "--listen-client-urls", self.url,
             "--advertise-client-urls", self.url, "--listen-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-cluster", f"s=http://127.0.0.1:{peer}", "--cert-file", str(self.pki / "server.pem"),
             "--key-file", str(self.pki / "server.key"), "--trusted-ca-file", str(self.pki / "ca.pem"),
             "--client-cert-auth", "--log-level", "warn"], stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.ctl("endpoint", "health", check=False).returncode == 0, 30, "etcd over TLS",
                 interval=0.2)
        # etcd users: root (administration), policyd (read and write its prefix only)
        self.ctl("user", "add", "root:rootpw", "--interactive=false")
        self.ctl("user", "add", "policyd:s3cret", "--interactive=false")
        self.ctl("role", "add", "fleet")
        self.ctl("role", "grant-permission", "fleet", "readwrite", "/secure/", "--prefix=true")
        self.ctl("user", "grant-role", "policyd", "fleet")
        self.ctl("auth", "enable")

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(["etcdctl", "--endpoints", self.url, "--cacert", str(self.pki / "ca.pem"),
                               "--cert", str(self.pki / "root.pem"), "--key", str(self.pki / "root.key"), *args],
                              capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"}, timeout=30)
        if check and proc.returncode != 0:
            raise RuntimeError(f"etcdctl {args}: {proc.stderr}")
        return proc

    def tls(self, cn: str) -> list[str]:
        return ["--etcd-ca", str(self.pki / "ca.pem"), "--etcd-cert", str(self.pki / f"{cn}.pem"),
                "--etcd-key", str(self.pki / f"{cn}.key")]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._log.close()


@pytest.fixture(scope="module")
def secure():
    work = make_workdir("policyd-fleet-tls-")
    etcd = SecureEtcd(work)
    (work / "password").write_text("s3cret\n")
    (work / "wrong").write_text("guess\n")
    (work / "rules.yaml").write_text(RULES)
    yield etcd
    etcd.stop()
    shutil.rmtree(work, ignore_errors=True)


def source(etcd: SecureEtcd, prefix: str = "/secure/fleet") -> str:
    return f"etcd://127.0.0.1:{etcd.port}{prefix}"


def test_refusals_are_clear_and_publish_nothing(secure):
    rules, src = str(secure.work / "rules.yaml"), source(secure)
    no_ca = fleet_cli(src, "push", rules)
    assert no_ca.returncode == 2 and "UNAVAILABLE" in no_ca.stderr
    wrong = fleet_cli(src, "push", rules, *secure.tls("policyd"), "--etcd-user", "policyd",
                      "--etcd-password-file", str(secure.work / "wrong"))
    assert wrong.returncode == 2 and "etcd refused user 'policyd'" in wrong.stderr
    assert "guess" not in wrong.stderr + wrong.stdout
    # the certificate's name is the etcd user when no password is given: 'stranger' has no role
    stranger = fleet_cli(src, "push", rules, *secure.tls("stranger"))
    assert stranger.returncode == 2 and "permission denied" in stranger.stderr
    outside = fleet_cli(source(secure, "/elsewhere"), "push", rules, *secure.tls("policyd"),
                        "--etcd-user", "policyd", "--etcd-password-file", str(secure.work / "password"))
    assert outside.returncode == 2 and "permission denied" in outside.stderr
    assert secure.ctl("get", "/secure/", "--prefix", "--keys-only").stdout.strip() == ""


def test_daemon_follows_over_tls_with_its_certificate(secure):
    src = source(secure)
    login = [*secure.tls("policyd"), "--etcd-user", "policyd", "--etcd-password-file", str(secure.work / "password")]
    revision_of(fleet_cli(src, "push", str(secure.work / "rules.yaml"), *login))
    daemon = FleetDaemon(secure.work / "daemon", src, *secure.tls("policyd"),  # CN policyd = etcd user
                         "--state-dir", str(secure.work / "state"))
    daemon.start()
    try:
        revision = revision_of(fleet_cli(src, "device", "set", "Extra", "/x/%u:write", *login))
        wait_for(lambda: daemon.revision() == revision, 10, "the device change over TLS", interval=0.1)
        # a device key written by hand (not through policyd) that does not validate: that
        # device is denied everything, the rest of the policy is untouched
        secure.ctl("put", "/secure/fleet/policy/devices/Sensor", '{"rules": [["/a/#/b", "read"]]}')
        wait_for(lambda: "is not a valid device entry" in daemon.log(), 10, "the bad entry reported")
        check = subprocess.run([*POLICYD, "status", "--address", daemon.admin_address], capture_output=True,
                               text=True, cwd=ROOT, timeout=30)
        assert "etcd reachable" in check.stdout
        assert "1 to kick: Sensor" in daemon.log()
        # a base pointer written by hand to chunks that are not there: the revision is rejected,
        # the policy in force stays, later device changes still apply, and a restart (a fresh
        # sync of the same bad base) keeps serving the saved revision instead of failing
        kept = daemon.revision()
        secure.ctl("put", "/secure/fleet/policy/base", '{"sha256": "' + "ab" * 32 + '", "chunks": 2, "size": 9}')
        wait_for(lambda: "rejected, keeping revision %d" % kept in daemon.log(), 10, "the bad base rejected")
        assert daemon.revision() == kept
        revision = revision_of(fleet_cli(src, "device", "set", "Later", "/l:write", *login))
        wait_for(lambda: daemon.revision() == revision, 10, "a device change after the bad base", interval=0.1)
        daemon.stop()
        daemon.start()  # its first sync fails on the bad base: it starts from the saved state
        assert daemon.revision() == revision
        wait_for(lambda: "etcd reachable" in daemon.status(), 15, "the daemon following etcd again",
                 interval=0.3)
    finally:
        daemon.stop()
