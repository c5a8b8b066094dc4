"""`pip install .` gives a working `policyd`, generated gRPC stubs included.

The package is built from a copy of the source tree *without* policyd/v1 (a
clean checkout: stubs are never committed), via the sdist as `pip` from an
index would, and installed into a fresh venv. To stay fast and offline the
build uses this venv's setuptools and grpcio-tools (--no-build-isolation), and
the fresh venv borrows this venv's dependencies through a .pth line (its own
`policyd` comes only from the wheel).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.packaging


def run(*cmd, cwd=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def clean_checkout(dest: Path) -> Path:
    dest.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "proto", dest / "proto")
    shutil.copytree(ROOT / "policyd", dest / "policyd",
                    ignore=shutil.ignore_patterns("__pycache__", "v1"))
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("pkg")
    src = clean_checkout(work / "src")
    sdist_dir = work / "sdist"
    built = run(sys.executable, "-c",
                f"from setuptools import build_meta as b; print(b.build_sdist({str(sdist_dir)!r}))", cwd=src)
    # no packaging warnings (e.g. the license table form setuptools deprecates)
    assert "Deprecat" not in built.stdout + built.stderr, built.stderr
    [sdist] = sdist_dir.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.11.4
        tar.extractall(work / "unpacked", **safe)
    [unpacked] = (work / "unpacked").iterdir()
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
        "-w", work / "wheel", unpacked)
    [wheel] = (work / "wheel").glob("*.whl")
    venv = work / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    site = Path(run(venv / "bin" / "python", "-c",
                    "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    (site / "borrowed-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-deps", "--no-index",
        "-q", wheel)
    return venv


def test_installed_command_reports_its_version(installed, tmp_path):
    out = run(installed / "bin" / "policyd", "--version", cwd=tmp_path).stdout
    assert out.strip() == "policyd 0.1.0"


def test_installed_stubs_come_from_the_wheel(installed, tmp_path):
    out = run(installed / "bin" / "python", "-c",
              "import policyd.v1.policy_pb2_grpc as g; print(g.__file__)", cwd=tmp_path).stdout
    assert out.strip().startswith(str(installed))


def test_installed_command_decides(installed, tmp_path):
    rules = ROOT / "examples" / "rules.yaml"
    policyd = installed / "bin" / "policyd"
    allow = run(policyd, "check", "--rules", rules, "--username", "Device123",
                "--topic", "/device/Device123/t", "--access", "write", cwd=tmp_path)
    assert allow.stdout.splitlines()[0] == "allow"
    deny = subprocess.run([str(policyd), "check", "--rules", str(rules), "--username", "Device999",
                           "--topic", "/device/Device123/t", "--access", "write"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert (deny.returncode, deny.stdout.splitlines()[0]) == (1, "deny")


def test_installed_serve_has_its_operations_flags(installed, tmp_path):
    out = run(installed / "bin" / "policyd", "serve", "--help", cwd=tmp_path).stdout
    for flag in ("--metrics-listen", "--log-format", "--decision-log", "--dry-run"):
        assert flag in out
