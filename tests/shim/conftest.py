"""In-process tests of the plugin (cffi + stub broker) against a real `policyd serve`."""

from __future__ import annotations

import os
import shutil

import pytest

from harness import PolicyDaemon, make_workdir

from shimlib import Shim, build_stub, plugin_path

RULES = """\
superusers: [admin]
users:
  Device123:
    - {topic: /device/%u/#, access: readwrite}
    - {topic: /device/%u/secret, access: deny}
  ab:
    - {topic: t, access: readwrite}
patterns:
  - {topic: /device/%u/#, access: readwrite}
anonymous:
  - {topic: public/#, access: read}
"""


# `make test-asan` preloads libasan into this process only; children (policyd, cc) run as usual.
os.environ.pop("LD_PRELOAD", None)


@pytest.fixture(scope="session")
def stub_so(tmp_path_factory):
    assert plugin_path().exists(), f"{plugin_path()} is not built (run `make plugin`)"
    assert shutil.which("cc"), "a C compiler is needed to build the stub broker"
    return build_stub(tmp_path_factory.mktemp("stub"))


@pytest.fixture
def workdir():
    path = make_workdir("policyd-shim-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_daemon(workdir):
    started = []

    def make(*args: str, rules: str = RULES) -> PolicyDaemon:
        daemon = PolicyDaemon(workdir, rules, *args).start()
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.stop()


@pytest.fixture
def make_shim(stub_so):
    shims = []

    def make(daemon: PolicyDaemon, **options) -> Shim:
        opts = {"policyd_address": daemon.address, "policyd_timeout_ms": "1000"}
        opts.update({f"policyd_{k}": str(v) for k, v in options.items()})
        shim = Shim(stub_so, opts)
        shims.append(shim)
        return shim

    yield make
    for shim in shims:
        if not shim.closed:
            shim.close()
