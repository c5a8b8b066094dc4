"""The real daemon never puts a half-written rules file in force."""

import os
import re
import subprocess
import time

import grpc

from harness import BROKER_USER, POLICYD, ROOT, broker_user_exists, make_workdir, run_policyd, wait_for
from policyd.v1 import policy_pb2 as pb
from policyd.v1 import policy_pb2_grpc as pb_grpc

GROUP = ["--socket-group", BROKER_USER] if os.geteuid() == 0 and broker_user_exists() else []
BEFORE = "users:\n  D1:\n    - {topic: a/#, access: write}\n"
# The new file starts with a valid policy of its own, which leaves D1 out.
PREFIX = "users:\n  D2:\n    - {topic: b/#, access: write}\n"
AFTER = PREFIX + "  D1:\n    - {topic: a/#, access: write}\n"


def allowed(stub, user: str, topic: str) -> bool:
    answer = stub.CheckAcl(pb.CheckAclRequest(has_username=True, username=user.encode(), client_id=b"c",
                                              topic=topic.encode(), access=pb.ACCESS_WRITE), timeout=5)
    return answer.result == pb.RESULT_ALLOW


def test_a_slow_in_place_writer_never_puts_its_prefix_in_force():
    work = make_workdir("policyd-writes-")
    rules = work / "rules.yaml"
    rules.write_text(BEFORE)
    admin = f"unix:{work}/admin.sock"
    log_path = work / "policyd.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*POLICYD, "serve", "--rules", str(rules), "--listen", f"unix:{work}/p.sock",
                                 "--admin-listen", admin, *GROUP], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: (work / "p.sock").exists() and b"listening" in log_path.read_bytes(), 30, "the daemon")
        generation = _generation(admin)
        with grpc.insecure_channel(f"unix:{work}/p.sock") as channel:
            stub = pb_grpc.PolicyStub(channel)
            assert allowed(stub, "D1", "a/x")
            with open(rules, "r+") as fh:  # in place, as `cat > rules.yaml` or a careless script
                fh.truncate(0)
                fh.write(PREFIX)
                fh.flush()
                deadline = time.monotonic() + 2.0  # many settle periods of the stat poll
                while time.monotonic() < deadline:
                    assert allowed(stub, "D1", "a/x"), log_path.read_text()
                    time.sleep(0.1)
                assert _generation(admin) == generation
                fh.write(AFTER[len(PREFIX):])
            wait_for(lambda: _generation(admin) != generation, 10, "the finished file to load")
            assert allowed(stub, "D1", "a/x") and allowed(stub, "D2", "b/x")
        assert log_path.read_text().count("policy generation") == 2  # start, then the whole file
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _generation(admin: str) -> int:
    return int(re.search(r"generation: (\d+)", run_policyd("status", "--address", admin).stdout).group(1))
