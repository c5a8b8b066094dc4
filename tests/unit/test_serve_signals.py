"""Signals reach `policyd serve` safely from the moment it starts loading its rules."""

import os
import signal
import subprocess

from harness import BROKER_USER, POLICYD, ROOT, broker_user_exists, make_workdir, run_policyd, wait_for

# As root the daemon refuses a socket the broker's user could not open (server/readiness.py).
GROUP = ["--socket-group", BROKER_USER] if os.geteuid() == 0 and broker_user_exists() else []

# Large enough that the first load takes a noticeable time (the YAML path, on purpose).
SLOW_RULES = "users:\n" + "".join(f"  D{i}: [{{topic: /device/%u/#, access: readwrite}}]\n" for i in range(60000))


def test_sighup_while_the_first_load_runs_queues_a_reload():
    work = make_workdir("policyd-signals-")
    rules = work / "rules.yaml"
    rules.write_text(SLOW_RULES)
    log_path = work / "policyd.log"
    admin = f"unix:{work}/admin.sock"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*POLICYD, "serve", "--rules", str(rules), "--listen", f"unix:{work}/p.sock",
                                 "--admin-listen", admin, "--no-watch", *GROUP], stdout=log, stderr=subprocess.STDOUT,
                                cwd=ROOT)
    try:
        wait_for(lambda: b"policyd starting" in log_path.read_bytes() or proc.poll() is not None, 30,
                 "the daemon to begin loading")
        assert b"loaded (start)" not in log_path.read_bytes()  # the signal lands during the load
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: b"(SIGHUP)" in log_path.read_bytes() or proc.poll() is not None, 60,
                 "the queued reload")
        assert proc.poll() is None, log_path.read_text()
        assert "generation:" in run_policyd("status", "--address", admin).stdout
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0 and b"policyd stopped" in log_path.read_bytes()


def test_systemd_hears_ready_once_the_daemon_answers_and_stopping_at_the_end(tmp_path):
    import socket

    work = make_workdir("policyd-notify-")
    rules = work / "rules.yaml"
    rules.write_text("users:\n  D1:\n    - {topic: a/#, access: read}\n")
    admin = f"unix:{work}/admin.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:  # stands in for systemd
        manager.bind(str(tmp_path / "notify.sock"))
        manager.settimeout(30)
        env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
        proc = subprocess.Popen([*POLICYD, "serve", "--rules", str(rules), "--listen", f"unix:{work}/p.sock",
                                 "--admin-listen", admin, "--no-watch", *GROUP], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            ready = manager.recv(4096).decode().split("\n")
            assert ready[0] == "READY=1" and ready[1].startswith("STATUS=serving generation ")
            # Ready means answering: the admin socket answers at once, no waiting.
            assert "generation:" in run_policyd("status", "--address", admin).stdout
            proc.terminate()
            assert manager.recv(4096) == b"STOPPING=1"
        finally:
            proc.terminate()
            proc.wait(timeout=30)
