"""What the broker benchmarks share: the four ACL configurations, a cached PKI of many device
certificates, the C load generator (bench/loadgen.c, built into .bench/), and broker CPU/memory
readings from /proc.

The configurations, all on the same TLS listener (`use_identity_as_username true`, one EC P-256
certificate per device, CN = device id):

  none      Mosquitto without any ACL
  acl_file  Mosquitto's acl_file with the seed's rules (`pattern readwrite /device/%u/#`, admin `#`)
  dynsec    Mosquitto's dynamic-security plugin: one client and one role per device (no %u there)
  policyd   our plugin and `policyd serve` with the same rules (`patterns: /device/%u/#`)
  policyd_identity  the same in identity mode (`auth_opt_policyd_identity cert`, no
            `use_identity_as_username`): each CONNECT asks policyd, which maps the certificate
            (on 2.1 off the broker's thread) and sends the device's scopes with its answer

The broker is Debian's mosquitto 2.0.11, or POLICYD_BROKER (e.g. the 2.1.2 build in .build/).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import Broker, BrokerConfig, Pki, PolicyDaemon  # noqa: E402

BENCH_DIR = ROOT / ".bench"
LOADGEN_SRC = ROOT / "bench" / "loadgen.c"
LOADGEN = BENCH_DIR / "loadgen"
DYNSEC_SO = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
CONFIGS = ("none", "acl_file", "dynsec", "policyd")
LABELS = {
    "none": "Mosquitto, no ACL",
    "acl_file": "Mosquitto `acl_file`, seed pattern",
    "dynsec": "dynamic-security plugin",
    "policyd": "policyd plugin",
    "policyd_identity": "policyd plugin, identity mode",
}

RULES = """\
superusers: [admin]
patterns:
  - topic: /device/%u/#
    access: readwrite
"""
ACL_FILE = "user admin\ntopic readwrite #\n\npattern readwrite /device/%u/#\n"


def device_names(count: int) -> list[str]:
    return [f"Device{i}" for i in range(1, count + 1)]


def build_loadgen() -> Path:
    """Compile the load generator when its source is newer than the binary."""
    BENCH_DIR.mkdir(exist_ok=True)
    if not LOADGEN.exists() or LOADGEN.stat().st_mtime < LOADGEN_SRC.stat().st_mtime:
        subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-o", str(LOADGEN), str(LOADGEN_SRC),
                        "-lmosquitto", "-lssl", "-lcrypto"], check=True)
    return LOADGEN


def cached_pki(devices: int) -> Pki:
    """CA, server and `devices` EC P-256 device certificates under .bench/pki, made once.

    Issued in-process (one `policyd certs` process per device would take minutes).
    """
    from policyd.certs import issue_client

    pki_dir = BENCH_DIR / "pki"
    BENCH_DIR.mkdir(exist_ok=True)
    BENCH_DIR.chmod(0o755)  # the broker, as `mosquitto`, reads the server key below
    pki = Pki(pki_dir)
    if not pki.server_key.exists():
        pki.issue_base()
    for cn in ("admin", *device_names(devices)):
        if not (pki_dir / f"{cn}.pem").exists():
            issue_client(pki_dir, cn=cn)
    return pki


def dynsec_config(devices: list[str]) -> dict:
    """The seed's grants as dynamic-security clients and roles (it has no %u)."""
    def acls(topic: str) -> list[dict]:
        return [{"acltype": t, "topic": topic, "priority": 0, "allow": True}
                for t in ("publishClientSend", "publishClientReceive", "subscribePattern")]

    return {
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False,
                             "subscribe": False, "unsubscribe": True},
        "clients": [{"username": "admin", "roles": [{"rolename": "admin"}]}]
                   + [{"username": n, "roles": [{"rolename": n}]} for n in devices],
        "groups": [],
        "roles": [{"rolename": "admin", "acls": acls("#")}]
                 + [{"rolename": n, "acls": acls(f"/device/{n}/#")} for n in devices],
    }


def world_readable(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o644)
    return str(path)


def broker_config(config: str, workdir: Path, devices: list[str], plugin_extra: str = "") -> BrokerConfig:
    """The broker configuration for one of CONFIGS (the daemon, for policyd, is started apart)."""
    # A subscriber that lags must not lose messages (the default queue holds 1,000).
    cfg = BrokerConfig(plugin=config.startswith("policyd"), extra="max_queued_messages 0\n")
    if config == "acl_file":
        cfg.acl_file = world_readable(workdir / "acl", ACL_FILE)
    elif config == "dynsec":
        conf = workdir / "dynamic-security.json"
        world_readable(conf, json.dumps(dynsec_config(devices)))
        if os.geteuid() == 0:
            shutil.chown(conf, "mosquitto")  # it saves the file on changes
        cfg.extra += f"plugin {DYNSEC_SO}\nplugin_opt_config_file {conf}\n"
    elif config == "policyd":
        cfg.extra += plugin_extra
    elif config == "policyd_identity":
        cfg.use_identity_as_username = False
        cfg.extra += "auth_opt_policyd_identity cert\n" + plugin_extra
    return cfg


def start_daemon(workdir: Path, *extra: str) -> PolicyDaemon:
    return PolicyDaemon(workdir, RULES, "--log-level", "warning", *extra).start()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all threads, from /proc (10 ms ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def loadgen_args(broker: Broker, *args: str) -> list[str]:
    return [str(LOADGEN), "--port", str(broker.port), "--cafile", str(broker.pki.ca),
            "--certdir", str(broker.pki.dir), *args]


def percentile(values: list[float], p: float) -> float:
    """The value at the p-th percentile of the sorted samples (nearest rank below)."""
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
