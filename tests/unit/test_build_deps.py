"""`make build` needs only build dependencies; test tools come with the test targets; `make
install` keeps files that may hold secrets private; the unit's documentation is ours."""

import os
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEST_TOOLS = {"valgrind", "clang-14", "libclang-rt-14-dev", "etcd-server", "etcd-client", "systemd"}


def queried_packages(tmp_path, *groups) -> set[str]:
    """The packages install-system-deps.sh looks up, with a dpkg-query that records them."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    log = tmp_path / "queried"
    log.write_text("")
    (fake / "dpkg-query").write_text(f'#!/bin/sh\nfor a; do last="$a"; done\necho "$last" >> {log}\nprintf "install ok installed"\n')
    (fake / "dpkg-query").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    subprocess.run([ROOT / "scripts" / "install-system-deps.sh", *groups], check=True, env=env,
                   capture_output=True)
    return set(log.read_text().split())


def test_the_build_group_holds_no_test_tool(tmp_path):
    build = queried_packages(tmp_path, "build")
    assert build and not build & TEST_TOOLS and "gcc" in build and "libgrpc-dev" in build
    assert "mosquitto" not in build  # the broker is for running, not building the plugin
    everything = queried_packages(tmp_path, "build", "run", "test")
    assert TEST_TOOLS <= everything and "mosquitto" in everything


def test_make_build_asks_for_the_build_group_only():
    dry = subprocess.run(["make", "-n", "-B", "build"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "install-system-deps.sh build" in dry and " test" not in dry.split("install-system-deps.sh")[1].split("\n")[0]
    for target in ("test", "test-e2e", "valgrind", "fuzz-short", "test-asan"):
        dry = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True).stdout
        assert "install-system-deps.sh build run test" in dry, target


def test_license_is_an_spdx_expression():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'license = "EPL-2.0"' in text and "setuptools>=77" in text


def test_install_keeps_rules_private(tmp_path):
    dest = tmp_path / "root"
    subprocess.run(["make", "install", f"DESTDIR={dest}"], cwd=ROOT, check=True, capture_output=True)
    rules = dest / "etc" / "policyd" / "rules.yaml"
    assert stat.S_IMODE(rules.stat().st_mode) == 0o640
    assert not stat.S_IMODE(rules.stat().st_mode) & 0o007
    unit = (dest / "etc" / "systemd" / "system" / "policyd.service").read_text()
    docs = [line for line in unit.splitlines() if line.startswith("Documentation=")]
    assert docs and "eclipse/mosquitto" not in docs[0]
    for url in docs[0].split("=", 1)[1].split():
        assert url.startswith("file:/usr/share/doc/mosquitto-policyd/")
        assert (dest / url[len("file:/"):]).exists(), url
