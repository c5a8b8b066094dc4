"""Ready means answering: options checked at start, the broker's user able to open the
socket, /readyz and READY=1 only while a check over the real socket is answered."""

import os
import subprocess
import urllib.error
import urllib.request

import pytest

from harness import BROKER_USER, POLICYD, ROOT, broker_user_exists, free_port, make_workdir, wait_for
from policyd.server.readiness import socket_access_problem

GROUP = ["--socket-group", BROKER_USER] if os.geteuid() == 0 and broker_user_exists() else []
RULES = "users:\n  D1:\n    - {topic: a/#, access: read}\n"


def serve(work, *flags):
    rules = work / "rules.yaml"
    rules.write_text(RULES)
    return subprocess.run([*POLICYD, "serve", "--rules", str(rules), "--listen", f"unix:{work}/p.sock",
                           "--no-watch", *flags], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("flags, says", [
    (["--cache-ttl-ms", "-1"], "--cache-ttl-ms -1: must be 0"),
    (["--cache-ttl-ms", str(2**32)], "--cache-ttl-ms 4294967296"),
    (["--workers", "0"], "--workers 0: must be 1"),
    (["--socket-mode", "0666"], "--socket-mode 0666: any local user"),
    (["--socket-mode", "0060"], "nobody, not even the owner"),
    (["--socket-group", "no-such-group-here"], "no such group"),
    (["--admin-listen", "nonsense"], "--admin-listen: 'nonsense' is neither"),
    (["--state-dir", "/etc/hostname"], "exists and is not a directory"),
])
def test_every_option_is_checked_before_anything_starts(flags, says):
    work = make_workdir("policyd-options-")
    done = serve(work, *flags)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr and "not starting" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (work / "p.sock").exists()


@pytest.mark.skipif(os.geteuid() != 0 or not broker_user_exists(), reason="needs root and the mosquitto user")
def test_as_root_a_socket_the_broker_user_cannot_open_is_refused_with_the_fix():
    work = make_workdir("policyd-group-")
    done = serve(work)  # no --socket-group: root:root 0660, which mosquitto cannot open
    assert done.returncode == 2, done.stderr
    assert "the mosquitto user has no write permission" in done.stderr
    assert "--socket-group mosquitto" in done.stderr
    hidden = make_workdir("policyd-group-")
    hidden.chmod(0o700)  # the right group, but a directory the broker cannot enter
    done = serve(hidden, *GROUP)
    assert done.returncode == 2 and f"cannot enter the directory {hidden}" in done.stderr


def test_socket_access_is_judged_like_the_kernel_does():
    tmp_path = make_workdir("policyd-access-")
    sock = tmp_path / "s"
    sock.write_text("")
    sock.chmod(0o660)
    uid, gid = 12345, 23456
    if os.geteuid() == 0:
        os.chown(sock, 0, gid)
        assert socket_access_problem(str(sock), uid, {gid}) is None
        assert "no write permission" in socket_access_problem(str(sock), uid, {gid + 1})
        assert socket_access_problem(str(sock), None, {gid}) is None
    assert socket_access_problem(str(sock), 0, set()) is None  # root opens anything
    tmp_path.chmod(0o700)
    assert "cannot enter the directory" in socket_access_problem(str(sock), uid, {gid})
    tmp_path.chmod(0o755)


def test_readyz_follows_what_a_broker_would_see():
    work = make_workdir("policyd-ready-")
    port = free_port()
    rules = work / "rules.yaml"
    rules.write_text(RULES)
    proc = subprocess.Popen([*POLICYD, "serve", "--rules", str(rules), "--listen", f"unix:{work}/p.sock",
                             "--no-watch", "--metrics-listen", f"127.0.0.1:{port}", *GROUP], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _readyz(port) == 200, 30, "/readyz 200")
        os.unlink(work / "p.sock")  # e.g. a cleanup job: no broker can connect any more
        wait_for(lambda: _readyz(port) == 503, 10, "/readyz to say the daemon no longer answers")
        assert http_get(port, "/healthz")[0] == 200  # alive, but not ready
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _readyz(port: int) -> int:
    try:
        return http_get(port, "/readyz")[0]
    except OSError:
        return 0
