"""The shipped systemd units are valid, hardened, and start policyd with flags it accepts.

`systemd-analyze verify` checks the unit as systemd would load it. It only
warns (exit 0) about unknown keys or values it cannot parse, so any warning
about the file fails the test too. The ExecStart path is pointed at this
venv's `policyd` because verify insists that the command exists.
"""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from policyd.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "examples" / "systemd"
INSTALLED_POLICYD = "/opt/policyd/bin/policyd"


def service_text() -> str:
    return (UNITS / "policyd.service").read_text()


def service_section() -> dict[str, list[str]]:
    """[Service] keys to their values (repeated keys kept), continuation lines joined."""
    out: dict[str, list[str]] = {}
    section = None
    for line in service_text().replace("\\\n", " ").splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def verify(unit: Path) -> subprocess.CompletedProcess:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is not installed (Debian package systemd; run `make deps`)"
    return subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)


def test_service_unit_verifies_without_warnings(tmp_path):
    policyd = Path(sys.executable).with_name("policyd")
    assert policyd.exists()
    unit = tmp_path / "policyd.service"
    unit.write_text(service_text().replace(INSTALLED_POLICYD, str(policyd)))
    proc = verify(unit)
    assert proc.returncode == 0 and unit.name not in proc.stderr, proc.stderr


def test_verify_would_catch_a_broken_unit(tmp_path):
    """The check above can fail: a typo'd option is reported."""
    unit = tmp_path / "policyd.service"
    unit.write_text(service_text().replace(INSTALLED_POLICYD, sys.executable)
                    .replace("Restart=on-failure", "Restart=sometimes"))
    assert unit.name in verify(unit).stderr


def test_service_runs_as_its_user_with_restart_reload_and_runtime_dir():
    s = service_section()
    assert s["User"] == ["policyd"] and s["SupplementaryGroups"] == ["mosquitto"]
    assert s["Restart"] == ["on-failure"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["RuntimeDirectory"] == ["policyd"] and s["RuntimeDirectoryMode"] == ["0755"]


def test_service_is_hardened():
    s = service_section()
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "PrivateDevices": "yes", "CapabilityBoundingSet": "",
                       "RestrictSUIDSGID": "yes", "IPAddressDeny": "any"}.items():
        assert s.get(key) == [value], key


def test_syscall_filter_allows_what_the_daemon_needs():
    """--socket-group chowns the broker's socket: @chown must survive the filter."""
    filters = service_section()["SystemCallFilter"]
    assert filters == ["@system-service"], "a deny list here must be checked against chown/fchownat"
    expanded = subprocess.run(["systemd-analyze", "syscall-filter", "@system-service"],
                              capture_output=True, text=True, timeout=60).stdout
    assert "@chown" in expanded.split()


def test_exec_start_flags_are_accepted_by_policyd():
    s = service_section()
    argv = shlex.split(s["ExecStart"][0])
    assert argv[0] == INSTALLED_POLICYD
    args = build_parser().parse_args(argv[1:])
    assert args.listen == "unix:/run/policyd/policyd.sock" and args.socket_group == "mosquitto"
    assert args.metrics_listen.startswith("127.0.0.1:")
    assert args.state_dir == "/var/lib/policyd" and s["StateDirectory"] == ["policyd"]
    pre = shlex.split(s["ExecStartPre"][0])
    assert pre[0] == "-" + INSTALLED_POLICYD  # a rejected file must not stop the start: see --state-dir
    assert build_parser().parse_args(pre[1:]).files == [args.rules]


def test_mosquitto_drop_in_orders_the_broker_after_policyd():
    conf = configparser.ConfigParser()
    conf.read(UNITS / "mosquitto.service.d" / "policyd.conf")
    assert conf["Unit"]["Wants"] == "policyd.service" and conf["Unit"]["After"] == "policyd.service"


def test_sysusers_file_creates_the_user_in_the_mosquitto_group():
    lines = [line.split() for line in (UNITS / "policyd.sysusers.conf").read_text().splitlines()
             if line and not line.startswith("#")]
    assert ["u", "policyd"] == lines[0][:2]
    assert ["m", "policyd", "mosquitto"] in lines
    sysusers = shutil.which("systemd-sysusers")
    if sysusers:  # part of the same Debian package as systemd-analyze
        proc = subprocess.run([sysusers, "--dry-run", str(UNITS / "policyd.sysusers.conf")],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name", ["policyd.service"])
def test_make_install_puts_plugin_unit_and_examples_in_place(tmp_path, name):
    plugin = ROOT / "plugin_c" / "build" / "mosquitto_policyd.so"
    assert plugin.exists(), "build the plugin first (make plugin)"
    proc = subprocess.run(["make", "-s", "-o", str(plugin.relative_to(ROOT)), "install", f"DESTDIR={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    installed = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    multiarch = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True).stdout.strip()
    assert f"usr/lib/{multiarch}/mosquitto_policyd.so" in installed
    assert f"etc/systemd/system/{name}" in installed
    assert "etc/systemd/system/mosquitto.service.d/policyd.conf" in installed
    assert "usr/lib/sysusers.d/policyd.conf" in installed
    assert "etc/policyd/rules.yaml" in installed
    assert "usr/share/doc/mosquitto-policyd/examples/mosquitto.conf" in installed
    # An operator's rules survive a second install (an upgrade).
    rules = tmp_path / "etc/policyd/rules.yaml"
    rules.write_text("# mine\n")
    subprocess.run(["make", "-s", "-o", str(plugin.relative_to(ROOT)), "install", f"DESTDIR={tmp_path}"],
                   cwd=ROOT, check=True, capture_output=True, timeout=120)
    assert rules.read_text() == "# mine\n"
