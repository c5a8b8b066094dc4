"""The rules file watcher (policyd/server/watcher.py) on a real file and a real PolicyStore."""

import os
import time

import pytest
from harness import wait_for

from policyd.server.store import PolicyStore
from policyd.server.watcher import RulesFileWatcher

GOOD = "users:\n  D1:\n    - topic: /device/%u/#\n      access: readwrite\n"
OTHER = "users:\n  D2:\n    - topic: /device/%u/#\n      access: readwrite\n"
SETTLE = 0.25


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def setup(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(GOOD)
    store = PolicyStore(str(rules))
    assert store.reload("start").ok
    clock = Clock()
    # Stat polling alone: the fallback, and what sees changes inotify does not report.
    watcher = RulesFileWatcher(store, settle_s=SETTLE, clock=clock, use_inotify=False)
    return rules, store, watcher, clock


def settle(watcher, clock, rounds=1):
    """Polls as the thread would, across `rounds` settle periods; the last outcome."""
    outcome = None
    for _ in range(rounds):
        outcome = watcher.poll() or outcome
        clock.now += SETTLE + 0.01
        outcome = watcher.poll() or outcome
    return outcome


def replace_by_rename(path, text):
    tmp = path.with_name(".rules.yaml.swp")
    tmp.write_text(text)
    os.rename(tmp, path)


def test_no_change_no_reload(setup):
    rules, store, watcher, clock = setup
    gen = store.status().generation
    assert settle(watcher, clock, 3) is None
    assert store.status().generation == gen


def test_rename_over_the_file_reloads_once_after_it_settles(setup):
    rules, store, watcher, clock = setup
    gen = store.status().generation
    replace_by_rename(rules, OTHER)
    assert watcher.poll() is None  # seen, not yet settled
    assert store.status().generation == gen
    outcome = settle(watcher, clock)
    assert outcome.ok and outcome.generation > gen and outcome.kicks == {"D1"}
    assert "D2" in store.current.users
    assert settle(watcher, clock, 2) is None  # acted upon once


def test_half_written_file_is_never_reported_when_the_write_completes(setup):
    rules, store, watcher, clock = setup
    gen = store.status().generation
    with open(rules, "w") as f:
        f.write(OTHER[:25])  # "users:\n  D2:\n    - topic" : invalid
    outcome = settle(watcher, clock)
    assert outcome is not None and not outcome.ok  # looked at, quietly
    assert store.reloads_failed == 0 and store.status().last_problems == ()
    with open(rules, "a") as f:
        f.write(OTHER[25:])
    outcome = settle(watcher, clock)
    assert outcome.ok and outcome.generation > gen
    assert store.reloads_failed == 0 and store.status().last_problems == ()


def test_invalid_file_that_stays_is_reported_and_changes_nothing(setup):
    rules, store, watcher, clock = setup
    gen = store.status().generation
    rules.write_text("users:\n  D1:\n    - topic: a/#/b\n      access: read\n")
    settle(watcher, clock, 2)
    st = store.status()
    assert st.generation == gen and "D1" in store.current.users
    assert store.reloads_failed == 1 and not store.last_reload_ok
    assert st.last_problems and st.last_problems[0].ref.line == 3
    assert settle(watcher, clock, 2) is None  # reported once, not on every poll
    assert store.reloads_failed == 1


def test_touch_and_same_content_do_not_reload(setup):
    rules, store, watcher, clock = setup
    gen = store.status().generation
    os.utime(rules, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))
    replace_by_rename(rules, GOOD)
    assert settle(watcher, clock, 2) is None
    assert store.status().generation == gen and store.reloads_ok == 1


def test_same_content_after_a_failure_reloads_to_clear_the_error(setup):
    rules, store, watcher, clock = setup
    rules.write_text("bogus: 1\n")
    settle(watcher, clock, 2)
    assert not store.last_reload_ok
    rules.write_text(GOOD)
    outcome = settle(watcher, clock)
    assert outcome.ok and store.last_reload_ok and store.status().last_problems == ()


def test_missing_file_is_reported_then_recovered(setup):
    rules, store, watcher, clock = setup
    gen = store.status().generation
    rules.unlink()
    settle(watcher, clock, 2)
    assert store.reloads_failed == 1 and store.status().generation == gen
    rules.write_text(OTHER)
    assert settle(watcher, clock).ok


def test_quick_successive_writes_load_only_the_last(setup):
    rules, store, watcher, clock = setup
    for i in range(5):
        rules.write_text(OTHER + f"# {i}\n" * i)
        watcher.poll()
        clock.now += SETTLE / 3
    assert store.reloads_ok == 1  # nothing settled yet
    settle(watcher, clock)
    assert store.reloads_ok == 2


def test_thread_reloads_on_a_real_edit(setup):
    rules, store, _, _ = setup
    watcher = RulesFileWatcher(store, interval_s=0.02, settle_s=0.05)
    watcher.start()
    try:
        gen = store.status().generation
        replace_by_rename(rules, OTHER)
        wait_for(lambda: store.status().generation > gen, 5, "watcher reload")
        assert "D2" in store.current.users
    finally:
        watcher.stop()


# --- inotify: loaded when the writer is done --------------------------------------

@pytest.fixture
def notified(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(GOOD)
    store = PolicyStore(str(rules))
    assert store.reload("start").ok
    clock = Clock()
    watcher = RulesFileWatcher(store, settle_s=SETTLE, clock=clock)
    if watcher._events is None:  # noqa: SLF001
        pytest.skip("no inotify here")
    yield rules, store, watcher, clock
    watcher.stop()


def test_a_slow_in_place_writer_is_never_loaded_before_it_closes(notified):
    rules, store, watcher, clock = notified
    gen = store.status().generation
    full = OTHER + "  D3:\n    - {topic: x/#, access: read}\n"
    with open(rules, "w") as fh:
        fh.write(OTHER)  # a prefix that is a valid policy on its own
        fh.flush()
        for _ in range(4):  # long past the settle period
            assert watcher.poll() is None
            clock.now += SETTLE
        assert watcher.writing and store.status().generation == gen
        fh.write(full[len(OTHER):])
    outcome = watcher.poll()
    assert outcome.ok and "D3" in store.current.users and store.status().generation > gen


def test_a_file_renamed_over_is_loaded_at_once(notified):
    rules, store, watcher, clock = notified
    replace_by_rename(rules, OTHER)
    outcome = watcher.poll()  # no settle period: the rename says the writer is done
    assert outcome is not None and outcome.ok and "D2" in store.current.users


def test_a_symlink_swap_is_seen_by_the_stat_poll(notified, tmp_path):
    rules, store, _, clock = notified
    target = tmp_path / "v1.yaml"
    target.write_text(GOOD)
    link = tmp_path / "link.yaml"
    link.symlink_to(target)
    store = PolicyStore(str(link))
    assert store.reload("start").ok
    watcher = RulesFileWatcher(store, settle_s=SETTLE, clock=clock)
    try:
        new = tmp_path / "v2.yaml"
        new.write_text(OTHER)
        tmp_link = tmp_path / ".link.tmp"
        tmp_link.symlink_to(new)
        os.rename(tmp_link, link)  # what a ConfigMap update does, one level up
        outcome = settle(watcher, clock, 2)
        assert outcome is not None and outcome.ok and "D2" in store.current.users
    finally:
        watcher.stop()
