"""`make valgrind`: the real broker with the plugin under valgrind memcheck, briefly, with a few
real TLS clients (publish, subscribe, deny, disconnect, a policyd restart), then a clean stop.

Exits 0 when memcheck reports no errors (invalid reads/writes, uses of uninitialised values,
definite leaks); otherwise prints the report and exits 1. Not part of `make test` (too slow).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import Broker, Device, Pki, PolicyDaemon, make_workdir, wait_for  # noqa: E402

RULES = """\
superusers: [admin]
patterns:
  - {topic: /device/%u/#, access: readwrite}
"""
SUPPRESSIONS = Path(__file__).resolve().parent / "valgrind.supp"


class ValgrindBroker(Broker):
    def start(self, timeout: float = 120) -> "Broker":
        self.conf_path.write_text(self.render_config() + "auth_opt_policyd_stats_interval_s 1\n")
        self.vg_log = self.workdir / "valgrind.log"
        self._log = open(self.log_path, "ab")
        cmd = ["valgrind", "--tool=memcheck", "--leak-check=full", "--errors-for-leak-kinds=definite",
               "--show-leak-kinds=definite", "--track-origins=yes", "--num-callers=30",
               f"--log-file={self.vg_log}"]
        if SUPPRESSIONS.exists():
            cmd.append(f"--suppressions={SUPPRESSIONS}")
        self.proc = subprocess.Popen([*cmd, "mosquitto", "-c", str(self.conf_path)],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(lambda: self._port_open() or self.proc.poll() is not None, timeout, "mosquitto under valgrind")
        return self


def exercise(broker: Broker, daemon: PolicyDaemon) -> None:
    sub = Device(broker, "admin").connect(timeout=60)
    assert sub.subscribe("/device/#", timeout=60) == 1
    devices = [Device(broker, f"Device{i}").connect(timeout=60) for i in range(3)]
    for round_ in range(3):
        for d in devices:
            for t in range(5):
                assert d.publish(f"/device/{d.cn}/t{t}", b"x", timeout=60) == 0   # misses, then scoped hits
            assert d.publish("/device/Other/t", b"x", timeout=60) == 0x87     # denied, cached deny after
    daemon.stop()                       # outage: cached answers still served, others denied
    devices[0].publish(f"/device/{devices[0].cn}/t0", b"x", timeout=60)
    devices[0].publish(f"/device/{devices[0].cn}/new", b"x", timeout=60)
    daemon.start()
    wait_for(lambda: devices[1].publish(f"/device/{devices[1].cn}/later", b"x", timeout=60) == 0, 60, "recovery")
    for d in devices:
        d.close()                       # MOSQ_EVT_DISCONNECT drops their entries
    sub.received(2.0)
    sub.close()


def main() -> int:
    workdir = make_workdir("policyd-valgrind-")
    daemon = broker = None
    try:
        pki = Pki(workdir / "pki").issue_base()
        daemon = PolicyDaemon(workdir, RULES).start()
        broker = ValgrindBroker(workdir, pki, daemon).start()
        exercise(broker, daemon)
        broker.proc.terminate()
        broker.proc.wait(timeout=180)
        report = broker.vg_log.read_text()
        m = re.search(r"ERROR SUMMARY: (\d+) errors", report)
        errors = int(m.group(1)) if m else -1
        kept = f" (log {broker.vg_log})" if "--keep" in sys.argv else " (--keep keeps the log)"
        print(f"valgrind memcheck of mosquitto + plugin: ERROR SUMMARY {errors} errors{kept}")
        summary = [l for l in report.splitlines() if "definitely lost" in l or "ERROR SUMMARY" in l]
        print("\n".join(summary))
        if errors != 0:
            print(report[-20000:])
            return 1
        return 0
    finally:
        if broker:
            broker.stop()
        if daemon:
            daemon.stop()
        if "--keep" not in sys.argv:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
