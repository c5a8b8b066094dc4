#!/usr/bin/env python3
"""Broker instructions per message under callgrind: no ACL, acl_file, dynamic security, policyd.

Deterministic where wall-clock figures on a shared machine are not: the broker runs under
`valgrind --tool=callgrind --instr-atstart=no`, so nothing is counted while it starts, loads its
configuration and accepts the TLS handshakes. One load-generator process (bench/loadgen.c,
libmosquitto, one poll loop) connects --devices TLS devices and one admin subscriber on
`/device/#`, sends one warm-up message per device (which fills every cache the broker has, ours
included), then instrumentation is switched on (`callgrind_control -i on`), --messages rounds in
which each device publishes one message into its own subtree at the chosen QoS and the admin
receives the round before the next starts (with --batch K, every K messages before the next K), and
the counters are dumped (`callgrind_control -d`) and switched off. The load generator runs outside
valgrind and the daemon is a separate process, so neither is in the broker's count; with a warm
cache the daemon is not asked at all (the plugin's cache TTL is raised for the run: callgrind
slows the broker ~50×).

Reported per configuration and QoS: broker instructions (Ir) per delivered message, the ratio to
no ACL, and the Ir per message inclusive in `mosquitto_acl_check` (callgrind_annotate
--inclusive=yes): each message costs two checks, WRITE for the publisher and READ for the admin.
"in TICK" is `plugin__handle_tick` per message: plugins' periodic work (about ten calls a second),
which callgrind's slowdown spreads over ~50× fewer messages than the broker would handle.

Each configuration runs --runs times (the configurations taking turns); medians are reported, with
the spread of Ir/msg, because the broker's own work per message still moves by up to ~2 % between
runs (how its reads and writes fall together), while the acl_check column barely moves.

    .venv/bin/python bench/broker_instructions.py [--devices 100] [--messages 50] [--qos 0,1] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from stack import (CONFIGS, LABELS, Broker, broker_config, build_loadgen, cached_pki, device_names,
                   loadgen_args, median, start_daemon)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from harness import BROKER_USER, broker_env, make_workdir, wait_for  # noqa: E402

# The plugin's cache must outlive a run slowed down by callgrind; misses during the warm-up may
# take far longer than the default 100 ms deadline.
POLICYD_CALLGRIND = ("auth_opt_policyd_cache_ttl_s 3600\n"
                     "auth_opt_policyd_timeout_ms 5000\n")
DAEMON_TTL = ("--cache-ttl-ms", "3600000")


def as_broker_user() -> dict:
    """Popen arguments that run a process as the broker's user, with that user's groups only."""
    if os.geteuid() != 0:
        return {}
    return {"user": BROKER_USER, "group": BROKER_USER, "extra_groups": [BROKER_USER]}


class CallgrindBroker(Broker):
    """The same broker, started under callgrind with instrumentation off."""

    def render_config(self) -> str:
        # The harness logs every packet (`log_type all`): a quarter of the broker's instructions,
        # the same in every configuration, which would only dilute the ratios.
        text = super().render_config()
        return text.replace("log_type all\n", "log_type error\nlog_type warning\n").replace(
            "connection_messages true\n", "connection_messages false\n")

    def start(self, timeout: float = 180) -> "CallgrindBroker":
        self.out_dir = self.workdir / "callgrind"
        self.out_dir.mkdir(mode=0o755, exist_ok=True)
        shutil.chown(self.out_dir, "mosquitto")  # the broker writes its dumps after dropping root
        self.conf_path.write_text(self.render_config())
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--dump-instr=no",
             f"--callgrind-out-file={self.out_dir}/callgrind.out", f"--vgdb-prefix={self.out_dir}/vgdb",
             "mosquitto", "-c", str(self.conf_path)],
            env=broker_env(self.workdir), stdout=self._log, stderr=subprocess.STDOUT,
            # Started as `mosquitto` rather than dropping to it, and controlled as `mosquitto`:
            # vgdb from another user (root included) never gets an answer.
            **as_broker_user())
        wait_for(lambda: self._port_open() or self.proc.poll() is not None, timeout, "mosquitto under callgrind")
        if self.proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {self.proc.returncode}:\n{self.log()}")
        return self

    def control(self, *args: str) -> None:
        subprocess.run(["callgrind_control", f"--vgdb-prefix={self.out_dir}/vgdb", *args, str(self.proc.pid)],
                       check=True, **as_broker_user(),
                       stdout=subprocess.DEVNULL, timeout=120)

    def dumps(self) -> set[Path]:
        return set(self.out_dir.glob("callgrind.out*"))


def total_ir(dump: Path) -> int:
    for line in dump.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump}")


def inclusive_ir(dump: Path, function: str) -> int:
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(dump)],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if re.search(rf"[:\s]{function}\b", line):
            return int(line.split()[0].replace(",", ""))
    return 0


def measure(config: str, qos: int, pki, devices: list[str], messages: int, keep: Path | None,
            batch: int = 0) -> dict:
    workdir = make_workdir("policyd-callgrind-")
    daemon = start_daemon(workdir, *DAEMON_TTL) if config == "policyd" else None
    broker = CallgrindBroker(workdir, pki, daemon, broker_config(config, workdir, devices, POLICYD_CALLGRIND))
    gen = None
    ok = False
    try:
        broker.start()
        gen = subprocess.Popen(loadgen_args(broker, "--mode", "flood", "--devices", str(len(devices)),
                                            "--messages", str(messages), "--qos", str(qos), "--batch", str(batch)),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if gen.stdout.readline().strip() != "READY":
            raise RuntimeError(f"load generator failed before READY (rc={gen.wait()}):\n{broker.log()[-3000:]}")
        before = broker.dumps()
        broker.control("--instr=on")
        gen.stdin.write("go\n")
        gen.stdin.flush()
        done = gen.stdout.readline().split()
        broker.control("--dump")
        broker.control("--instr=off")
        if not done or done[0] != "DONE":
            raise RuntimeError(f"load generator failed in the measured phase: {done}")
        delivered = int(done[1])
        gen.stdin.write("quit\n")
        gen.stdin.flush()
        gen.wait(timeout=120)
        wait_for(lambda: broker.dumps() - before, 30, "the callgrind dump")
        dump = max(broker.dumps() - before, key=lambda p: p.stat().st_mtime)
        time.sleep(0.5)  # the dump is written in one go, but let it land
        ir = total_ir(dump)
        acl = inclusive_ir(dump, "mosquitto_acl_check")
        tick = inclusive_ir(dump, "plugin__handle_tick")
        ok = True
        if keep:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(dump, keep / f"callgrind.{config}.qos{qos}")
    finally:
        if gen and gen.poll() is None:
            gen.kill()
        broker.stop()
        if daemon:
            daemon.stop()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir} (broker and daemon logs)", file=sys.stderr)
    return {"config": config, "qos": qos, "delivered": delivered, "ir_per_msg": ir / delivered,
            "acl_per_msg": acl / delivered, "tick_per_msg": tick / delivered}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--messages", type=int, default=50, help="per device")
    ap.add_argument("--qos", default="0,1")
    ap.add_argument("--only", default=",".join(CONFIGS), help="configurations, comma separated")
    ap.add_argument("--runs", type=int, default=3, help="runs per configuration, taking turns; medians")
    ap.add_argument("--batch", type=int, default=0,
                    help="every BATCH messages delivered before the next are sent (1: one broker loop pass per "
                         "message); 0: rounds of one message per device")
    ap.add_argument("--keep-dumps", type=Path, help="copy each measured phase's callgrind dump here "
                    "(read it with callgrind_annotate --inclusive=yes)")
    args = ap.parse_args()
    build_loadgen()
    pki = cached_pki(args.devices)
    devices = device_names(args.devices)
    configs = [c for c in CONFIGS if c in args.only.split(",")]
    pace = f"batches of {args.batch}" if args.batch > 0 else f"rounds of {args.devices} messages"
    print(f"{args.devices} TLS devices × {args.messages} messages ({pace}), one admin subscriber on /device/#, "
          f"broker under callgrind, measured phase only")
    for qos in (int(q) for q in args.qos.split(",")):
        runs = [[measure(c, qos, pki, devices, args.messages, args.keep_dumps, args.batch) for c in configs]
                for _ in range(args.runs)]
        rows = []
        for i, config in enumerate(configs):
            mine = [run[i] for run in runs]
            ir = [r["ir_per_msg"] for r in mine]
            rows.append({"config": config, "delivered": min(r["delivered"] for r in mine), "ir_per_msg": median(ir),
                         "spread": (min(ir), max(ir)), "acl_per_msg": median([r["acl_per_msg"] for r in mine]),
                         "tick_per_msg": median([r["tick_per_msg"] for r in mine])})
        base = rows[0]["ir_per_msg"]
        print(f"\nQoS {qos} (medians of {args.runs} runs; Ir/msg min–max in brackets)")
        print(f"{'configuration':40} {'delivered':>9} {'Ir/msg':>9} {'× none':>7} {'Ir/msg in acl_check':>20} "
              f"{'in TICK':>8}  runs")
        for r in rows:
            print(f"{LABELS[r['config']]:40} {r['delivered']:9d} {r['ir_per_msg']:9.0f} "
                  f"{r['ir_per_msg'] / base:7.3f} {r['acl_per_msg']:20.0f} {r['tick_per_msg']:8.0f}  "
                  f"[{r['spread'][0]:.0f}–{r['spread'][1]:.0f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
