"""Fixtures that stand up the real stack: PKI, policyd, mosquitto with the plugin."""

from __future__ import annotations

import shutil

import pytest

from harness import BROKER, PLUGIN_SO, ROOT, Broker, BrokerConfig, Pki, PolicyDaemon, broker_version, make_workdir

# The seed scenario's rules, as shipped to users.
SEED_RULES = (ROOT / "examples" / "rules.yaml").read_text()


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.e2e)


def pytest_report_header(config):
    return f"broker under test: {BROKER} (mosquitto {'.'.join(map(str, broker_version()))})"


def pytest_configure(config):
    config.addinivalue_line("markers", "broker(min=..., max=...): the test needs a broker version "
                            "in [min, max) (tuples); on any other it is skipped, saying which it needs")


def pytest_runtest_setup(item):
    mark = item.get_closest_marker("broker")
    if mark is None:
        return
    low, high, version = mark.kwargs.get("min"), mark.kwargs.get("max"), broker_version()
    if (low and version < low) or (high and version >= high):
        pytest.skip(f"needs mosquitto {'>= ' + str(low) if low else ''}{' < ' + str(high) if high else ''}"
                    f"; this broker is {version}")


@pytest.fixture(scope="session", autouse=True)
def _real_parts_present():
    # Missing parts are an error, never a skip: a skipped e2e suite proves nothing.
    missing = [name for name in (BROKER, "mosquitto_pub", "mosquitto_sub", "openssl")
               if shutil.which(name) is None]
    assert not missing, f"not installed: {missing} (run `make deps`)"
    assert PLUGIN_SO.exists(), f"{PLUGIN_SO} is not built (run `make plugin`)"


@pytest.fixture(scope="module")
def workdir():
    path = make_workdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def pki(workdir):
    return Pki(workdir / "pki").issue_base()


@pytest.fixture(scope="module")
def daemon(workdir):
    d = PolicyDaemon(workdir, SEED_RULES).start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def broker(workdir, pki, daemon):
    b = Broker(workdir, pki, daemon, BrokerConfig()).start()
    yield b
    b.stop()


@pytest.fixture
def devices(broker):
    """Connect devices by certificate CN; all are closed after the test."""
    from harness import Device

    opened = []

    def connect(cn, **kw):
        dev = Device(broker, cn, **kw).connect()
        opened.append(dev)
        return dev

    yield connect
    for dev in opened:
        dev.close()
