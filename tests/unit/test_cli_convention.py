"""One convention for every command: results on stdout, problems on stderr as
`file:line:column: severity: key: message`, exit 0 yes / 1 no / 2 no answer, no tracebacks."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import POLICYD, ROOT, free_port, wait_for

PROBLEM = re.compile(r"^[^:\n]+:\d+:\d+: (error|warning): [\w.\[\]]+: .+$")
VALID = "users:\n  D1:\n    - {topic: dev/%u/#, access: readwrite}\n"
INVALID = "users:\n  D1:\n    - {topic: dev/%u/#, access: rw}\n"


def run(*args, stdin=None, cwd=None):
    proc = subprocess.run([*POLICYD, *args], capture_output=True, text=True, input=stdin, cwd=cwd or ROOT,
                          timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture
def files(tmp_path):
    (tmp_path / "ok.yaml").write_text(VALID)
    (tmp_path / "bad.yaml").write_text(INVALID)
    (tmp_path / "tests.yaml").write_text("- {username: D1, topic: dev/D1/x, access: write, expect: allow}\n"
                                         "- {username: D2, topic: dev/D1/x, access: write, expect: allow}\n")
    return tmp_path


def test_problems_go_to_stderr_in_one_format_and_exit_codes_mean_the_same(files):
    ok, bad, missing = files / "ok.yaml", files / "bad.yaml", files / "missing.yaml"
    # validate: 0 valid / 1 problems found / 2 unreadable; results stdout, problems stderr
    proc = run("validate", str(ok))
    assert (proc.returncode, proc.stderr) == (0, "") and "ok (1 identities" in proc.stdout
    proc = run("validate", str(bad))
    assert proc.returncode == 1 and proc.stdout == ""
    assert PROBLEM.match(proc.stderr.splitlines()[0]), proc.stderr
    assert proc.stderr.startswith(f"{bad}:3:33: error: users.D1[0].access: unknown access 'rw'")
    proc = run("validate", str(missing))
    assert proc.returncode == 2 and proc.stderr.startswith(f"{missing}: error: cannot read")
    assert run("validate", str(ok), str(bad), str(missing)).returncode == 2  # the worst wins
    # check and test: the same problem, the same line; an unusable rules file is "no answer" (2)
    for args in (("check", "--rules", str(bad), "--username", "D1", "--topic", "t", "--access", "read"),
                 ("test", str(files / "tests.yaml"), "--rules", str(bad))):
        proc = run(*args)
        assert proc.returncode == 2 and proc.stdout == "", args
        assert proc.stderr.splitlines()[0] == run("validate", str(bad)).stderr.splitlines()[0]
    assert run("check", "--rules", str(ok), "--username", "D1", "--topic", "dev/D1/x", "--access", "write").returncode == 0
    assert run("check", "--rules", str(ok), "--username", "D2", "--topic", "dev/D1/x", "--access", "write").returncode == 1
    proc = run("test", str(files / "tests.yaml"), "--rules", str(ok))
    assert proc.returncode == 1 and "FAIL" in proc.stdout and "1 passed, 1 failed" in proc.stdout


def test_validate_reads_standard_input(files):
    proc = run("validate", "-", stdin=VALID)
    assert proc.returncode == 0 and "<stdin>: ok" in proc.stdout
    proc = run("validate", "-", stdin=INVALID)
    assert proc.returncode == 1 and proc.stderr.startswith("<stdin>:3:33: error: users.D1[0].access:")


def test_json_output(files):
    doc = json.loads(run("validate", str(files / "ok.yaml"), str(files / "bad.yaml"), "--format", "json").stdout)
    assert [f["ok"] for f in doc["files"]] == [True, False] and doc["ok"] is False
    assert doc["files"][1]["problems"][0] == {
        "file": str(files / "bad.yaml"), "line": 3, "column": 33, "severity": "error",
        "key": "users.D1[0].access", "message": "unknown access 'rw' (expected read, write, readwrite, deny)"}
    doc = json.loads(run("check", "--rules", str(files / "ok.yaml"), "--username", "D1", "--topic", "dev/D1/x",
                         "--access", "write", "--explain", "--format", "json").stdout)
    assert doc["decision"] == "allow" and doc["rule"].endswith("(readwrite dev/%u/#)") and len(doc["trace"]) == 1
    proc = run("test", str(files / "tests.yaml"), "--rules", str(files / "ok.yaml"), "--format", "json")
    doc = json.loads(proc.stdout)
    assert (proc.returncode, doc["passed"], doc["failed"]) == (1, 1, 1)


@pytest.mark.parametrize("args, usage", [
    (("check", "--rules", "x", "--topic", "t", "--acess", "read"), "usage: policyd check"),
    (("validate", "--bogus", "x"), "usage: policyd validate"),
    (("certs", "client", "--dir", "x", "--bogus"), "usage: policyd certs client"),
    (("status", "--adress", "x"), "usage: policyd status"),
])
def test_a_subcommand_mistake_prints_that_subcommands_usage(args, usage):
    proc = run(*args)
    assert proc.returncode == 2 and proc.stderr.startswith(usage), proc.stderr


def test_defaults_are_shown_in_help():
    assert "(default: policyd-check)" in run("check", "--help").stdout
    text = run("serve", "--help").stdout
    assert "(default: 5000)" in text.replace("\n", " ").replace("  ", " ") or "5000" in text


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """A daemon with a TCP --listen and no --admin-listen: the admin socket is still there."""
    work = tmp_path_factory.mktemp("daemon")
    rules = work / "rules.yaml"
    rules.write_text(VALID)
    state = work / "state"
    log = open(work / "log", "wb")
    proc = subprocess.Popen([*POLICYD, "serve", "--rules", str(rules), "--listen", f"127.0.0.1:{free_port()}",
                             "--state-dir", str(state), "--no-watch"], stdout=log, stderr=subprocess.STDOUT,
                            cwd=ROOT)
    admin = state / "policyd-admin.sock"
    try:
        wait_for(lambda: admin.exists() or proc.poll() is not None, 20, "the admin socket")
        assert proc.poll() is None, (work / "log").read_text()
        yield {"rules": rules, "address": f"unix:{admin}"}
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_live_daemon_commands(daemon):
    address = daemon["address"]
    assert run("status", "--address", address).returncode == 0
    ask = ("check", "--address", address, "--username", "D1", "--topic", "dev/D1/x", "--access")
    assert run(*ask, "write").returncode == 0
    doc = json.loads(run(*ask, "subscribe", "--format", "json").stdout)
    assert doc["decision"] == "allow" and doc["generation"] > 0
    assert run("check", "--address", address, "--username", "D2", "--topic", "dev/D1/x", "--access",
               "write").returncode == 1
    # a rejected reload: the same problem format, exit 1; status says so and exits 1 too
    daemon["rules"].write_text(INVALID)
    try:
        proc = run("reload", "--address", address)
        assert proc.returncode == 1 and PROBLEM.match(proc.stderr.splitlines()[0]), proc.stderr
        assert proc.stderr.splitlines()[0] == run("validate", str(daemon["rules"])).stderr.splitlines()[0]
        proc = run("status", "--address", address)
        assert proc.returncode == 1 and "last reload failed:" in proc.stdout
        doc = json.loads(run("status", "--address", address, "--format", "json").stdout)
        assert doc["healthy"] is False and doc["last_error"][0]["severity"] == "error"
        doc = json.loads(run("reload", "--address", address, "--format", "json").stdout)
        assert doc["ok"] is False and doc["problems"][0]["line"] == 3
    finally:
        daemon["rules"].write_text(VALID)
    assert run("reload", "--address", address).returncode == 0
    assert run("status", "--address", address).returncode == 0


def test_no_tracebacks_on_an_operators_everyday_mistakes(daemon):
    for address in ("garbage://x", "unix:/nonexistent/admin.sock", "127.0.0.1:1"):
        proc = run("status", "--address", address, "--timeout", "2")
        assert proc.returncode == 2 and proc.stderr.startswith(f"{address}: error:"), proc.stderr
        assert len(proc.stderr.splitlines()) == 1
    # `policyd status | head -1`: the reader is gone before the output is written
    reader = subprocess.Popen([*POLICYD, "status", "--address", daemon["address"]], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader.stdout.close()
    _, err = reader.communicate(timeout=60)
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err
