"""What survives a daemon restart: policyd/server/state.py through PolicyStore.start()."""

import json
import logging
import os
import stat

import pytest

from policyd.engine import Access, Request
from policyd.server.state import STATE_NAME, StateDir
from policyd.server.store import PolicyStore

ALL = "users:\n  A:\n    - {topic: a/#, access: read}\n  B:\n    - {topic: b/#, access: read}\n"
NO_A = "users:\n  B:\n    - {topic: b/#, access: read}\n"
NO_B = "users:\n  A:\n    - {topic: a/#, access: read}\n"
BROKEN = "users:\n  A:\n    - {topic: a/#/b, access: read}\n"


@pytest.fixture
def paths(tmp_path):
    rules, state = tmp_path / "rules.yaml", tmp_path / "state"
    rules.write_text(ALL)
    return rules, state


def daemon(rules, state) -> PolicyStore:
    """One daemon's store, started the way `policyd serve --state-dir` starts it."""
    store = PolicyStore(str(rules), StateDir(str(state), str(rules)))
    store.start()
    return store


def allows(store, name, topic) -> bool:
    return store.current.decide(Request(name, "c", topic, Access.READ)).allowed


def test_every_load_is_saved_privately(paths):
    rules, state = paths
    store = daemon(rules, state)
    rules.write_text(NO_A)
    generation = store.reload("test").generation
    saved = StateDir(str(state), str(rules)).load()
    assert saved.data == NO_A.encode() and saved.generation == generation
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    names = sorted(os.listdir(state))
    assert len(names) == 2 and STATE_NAME in names  # the older rules file is gone
    for name in names:
        assert stat.S_IMODE(os.stat(state / name).st_mode) == 0o600


def test_restart_with_the_same_file_keeps_the_generation(paths):
    rules, state = paths
    generation = daemon(rules, state).status().generation
    again = daemon(rules, state)
    assert again.status().generation == generation and again.last_reload_ok


def test_restart_after_an_edit_replays_its_kicks_to_returning_brokers(paths):
    rules, state = paths
    first = daemon(rules, state)
    g1 = first.status().generation
    rules.write_text(NO_B)
    g2 = first.reload("test").generation       # kicks B, while the daemon runs
    rules.write_text(NO_A + "  C:\n    - {topic: c/#, access: read}\n")  # edited while it is down
    second = daemon(rules, state)
    g3 = second.status().generation
    assert g3 > g2 and not allows(second, "A", "a/x")
    # A broker that saw g2 learns of A; one that last saw g1 learns of both.
    assert second.subscribe(lambda swap: None, g2) == (g3, frozenset({"A"}))
    assert second.subscribe(lambda swap: None, g1) == (g3, frozenset({"A", "B"}))


def test_restart_with_a_broken_file_keeps_the_last_good_policy(paths, caplog):
    rules, state = paths
    generation = daemon(rules, state).status().generation
    rules.write_text(BROKEN)
    with caplog.at_level(logging.ERROR, "policyd.store"):
        store = daemon(rules, state)
    assert store.has_policy and store.status().generation == generation
    assert allows(store, "B", "b/x")
    assert not store.last_reload_ok and store.reloads_failed == 1
    assert "rules.yaml:3:15" in str(store.status().last_problems[0])
    assert f"reload (start) rejected, keeping generation {generation}" in caplog.text
    rules.write_text(NO_A)                      # fixed: an ordinary reload from here on
    assert store.reload("test").kicks == frozenset({"A"})


def test_without_saved_state_a_broken_file_leaves_no_policy(paths):
    rules, state = paths
    rules.write_text(BROKEN)
    store = daemon(rules, state)
    assert not store.has_policy and not os.path.exists(state)


@pytest.mark.parametrize("damage", ["not json", "other rules", "foreign path", "missing rules"])
def test_a_damaged_state_is_reported_and_ignored(paths, caplog, damage):
    rules, state = paths
    daemon(rules, state)
    state_file = state / STATE_NAME
    saved = json.loads(state_file.read_text())
    rules_file = state / f"rules-{saved['sha256']}.yaml"
    if damage == "not json":
        state_file.write_text("{")
    elif damage == "other rules":
        rules_file.write_text(NO_A)
    elif damage == "foreign path":
        state_file.write_text(json.dumps({**saved, "sha256": "../../etc/passwd"}))
    else:
        rules_file.unlink()
    rules.write_text(BROKEN)
    with caplog.at_level(logging.ERROR, "policyd.state"):
        store = daemon(rules, state)
    assert not store.has_policy  # it started from nothing, not from damaged bytes
    assert "ignoring the saved state" in caplog.text
    assert store.state.ignored
    from policyd.server.metrics import Metrics
    from policyd.server.service import Counters
    assert b"policyd_state_ignored 1.0" in Metrics(store, Counters()).render()


def test_a_failing_save_keeps_the_new_policy_and_is_counted(paths, caplog):
    rules, state = paths
    state.write_text("a file where the directory should be")
    with caplog.at_level(logging.ERROR, "policyd.store"):
        store = daemon(rules, state)
    assert store.has_policy and store.last_reload_ok and store.state_errors == 1
    assert "cannot save the state" in caplog.text
    from policyd.server.metrics import Metrics
    from policyd.server.service import Counters
    assert b"policyd_state_save_failures_total 1.0" in Metrics(store, Counters()).render()


def test_a_state_saved_for_another_rules_file_is_ignored(paths, caplog):
    rules, state = paths
    daemon(rules, state)
    other = rules.with_name("other.yaml")
    other.write_text(BROKEN)
    with caplog.at_level(logging.WARNING, "policyd.state"):
        store = daemon(other, state)
    assert not store.has_policy  # the first file's policy does not stand in for the second's
    assert f"it was saved for {rules}, not {other}" in caplog.text


class _Held:
    """`allows` for a policy object rather than a store."""

    def __init__(self, policy):
        self.current = policy
