"""A real etcd cluster on loopback ports (Debian's etcd-server), and daemons that follow it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional

from harness import (POLICYD, ROOT, BROKER_USER, PolicyDaemon, broker_user_exists, close_all, free_port,
                     wait_for)


class EtcdMember:
    def __init__(self, directory: Path, name: str):
        self.dir, self.name = directory, name
        self.client_port, self.peer_port = free_port(), free_port()
        self.proc: Optional[subprocess.Popen] = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self, initial_cluster: str, state: str = "new") -> None:
        self._log = open(self.dir / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen(
            ["etcd", "--name", self.name, "--data-dir", str(self.dir / self.name),
             "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
             "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
             "--initial-cluster", initial_cluster, "--initial-cluster-state", state,
             # Slack for a loaded 2-core machine: with 50/500 ms a busy CPU made leaders change
             # mid-test (writes then fail "leader changed"); failover still takes about a second.
             "--initial-cluster-token", "policyd-test", "--heartbeat-interval", "100",
             "--election-timeout", "1000", "--log-level", "warn"],
            stdout=self._log, stderr=subprocess.STDOUT)

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None


class EtcdCluster:
    """Three members (or `size`) with their data in `directory`."""

    def __init__(self, directory: Path, size: int = 3):
        assert shutil.which("etcd"), "etcd is not installed (run `make deps`: Debian package etcd-server)"
        directory.mkdir(parents=True, exist_ok=True)
        self.members = [EtcdMember(directory, f"m{i}") for i in range(size)]
        self.initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def source_hosts(self) -> str:
        return ",".join(f"127.0.0.1:{m.client_port}" for m in self.members)

    def source(self, prefix: str = "/policyd/test") -> str:
        return f"etcd://{self.source_hosts}{prefix}"

    def start(self, timeout: float = 30) -> "EtcdCluster":
        for member in self.members:
            member.start(self.initial)
        wait_for(self.healthy, timeout, "etcd cluster quorum", interval=0.2)
        return self

    def restart(self, member: EtcdMember, timeout: float = 30) -> None:
        member.start(self.initial, state="existing")
        wait_for(self.healthy, timeout, "etcd member back", interval=0.2)

    def healthy(self) -> bool:
        proc = subprocess.run(["etcdctl", "--endpoints", self.source_hosts, "--command-timeout=2s",
                               "put", "/health-probe", "x"], capture_output=True,
                              env={**os.environ, "ETCDCTL_API": "3"})
        return proc.returncode == 0

    def stop(self) -> None:
        for member in self.members:
            member.stop()


class FleetDaemon(PolicyDaemon):
    """`policyd serve --source etcd://...` on its own unix socket."""

    def __init__(self, workdir: Path, source: str, *extra_args: str):
        workdir.mkdir(parents=True, exist_ok=True)
        workdir.chmod(0o755)
        super().__init__(workdir, "", *extra_args)
        self.source = source

    def start(self, timeout: float = 30) -> "FleetDaemon":
        self.sock_dir.mkdir(mode=0o755, exist_ok=True)
        for path in (self.socket, self.admin_socket):
            if path.exists():
                path.unlink()
        group = ["--socket-group", BROKER_USER] if os.geteuid() == 0 and broker_user_exists() else []
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*POLICYD, "serve", "--source", self.source, "--listen", self.address, "--log-level", "info",
             *group, *self.extra_args], stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)
        wait_for(lambda: self.socket.exists() and self.admin_socket.exists() or self.proc.poll() is not None,
                 timeout, "policyd socket")
        if self.proc.poll() is not None:
            raise RuntimeError(f"policyd exited with {self.proc.returncode}:\n{self.log()}")
        return self

    def status(self) -> str:
        """`policyd status` (the CLI: what an operator reads)."""
        proc = subprocess.run([*POLICYD, "status", "--address", self.admin_address], capture_output=True,
                              text=True, timeout=30, cwd=ROOT)
        return proc.stdout + proc.stderr

    def _status_rpc(self):
        import grpc

        from policyd.v1 import policy_pb2 as pb
        from policyd.v1 import policy_pb2_grpc as pb_grpc

        with grpc.insecure_channel(self.admin_address) as channel:
            try:
                return pb_grpc.AdminStub(channel).Status(pb.StatusRequest(), timeout=5)
            except grpc.RpcError:
                return None

    def generation(self) -> int:
        """The generation in force, by the Admin.Status RPC (polled: no process per look)."""
        status = self._status_rpc()
        return status.generation if status is not None else -1

    def revision(self) -> int:
        """The etcd revision in force, as the status names it."""
        status = self._status_rpc()
        found = re.search(r"\(revision (\d+),", status.rules_file) if status is not None else None
        return int(found.group(1)) if found else -1


def fleet_cli(source: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """A `policyd` fleet command (push, device, history, rollback) against `source`."""
    started = time.monotonic()
    proc = subprocess.run([*POLICYD, *args, "--source", source], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    proc.seconds = time.monotonic() - started
    return proc


def revision_of(proc: subprocess.CompletedProcess) -> int:
    """The revision a successful fleet command printed last."""
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return int(proc.stdout.strip().split()[-1])


class FleetStack:
    """A PKI, a 3-member etcd cluster with `rules` pushed (at `revision`; a callable is given the
    PKI and returns them), and what a test starts on it: daemons, brokers and devices, all stopped
    by close() (devices first)."""

    def __init__(self, prefix: str, rules):
        from harness import Pki, make_workdir

        self.dir = make_workdir(prefix)
        self.pki = Pki(self.dir / "pki").issue_base()
        self.etcd = EtcdCluster(self.dir / "etcd").start()
        self.source = self.etcd.source()
        rules_file = self.dir / "rules.yaml"
        rules_file.write_text(rules(self.pki) if callable(rules) else rules)
        self.revision = revision_of(fleet_cli(self.source, "push", str(rules_file)))
        self.daemons: list = []
        self.brokers: list = []
        self.opened: list = []

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return fleet_cli(self.source, *args)

    def close(self) -> None:
        close_all(self.opened)
        for broker in self.brokers:
            broker.stop()
        for daemon in self.daemons:
            daemon.stop()
        self.etcd.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
