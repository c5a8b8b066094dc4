"""Build hook: generate the gRPC stubs (policyd/v1) from proto/ whenever the package is built.

Everything else about the package is declared in pyproject.toml. The stubs are
never committed, so `pip install .` (wheel or sdist) must make them itself:
build_py runs grpc_tools.protoc — the same command as `make proto` — before
copying the package. Without proto/ (building from a wheel's contents) the
stubs already present are used as they are.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.join("proto", "policyd", "v1", "policy.proto")
STUBS_PACKAGE = "policyd.v1"


def generate_stubs() -> None:
    if not os.path.exists(os.path.join(HERE, PROTO)):
        return
    from grpc_tools import protoc  # in [build-system].requires and the dev extra

    args = ["grpc_tools.protoc", "-I", "proto", "--python_out=.", "--grpc_python_out=.", "--pyi_out=.", PROTO]
    cwd = os.getcwd()
    os.chdir(HERE)
    try:
        if protoc.main(args) != 0:
            sys.exit(f"grpc_tools.protoc failed on {PROTO}")
    finally:
        os.chdir(cwd)


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        generate_stubs()
        # The package list was computed before the stubs existed on a clean checkout.
        if self.packages is not None and STUBS_PACKAGE not in self.packages:
            self.packages.append(STUBS_PACKAGE)
        super().run()


setup(cmdclass={"build_py": BuildPyWithStubs})
