"""Generations: unchanged content keeps its generation; a restart never goes back."""

import logging

from policyd.server.generations import ClockGenerations
from policyd.server.state import StateDir
from policyd.server.store import PolicyStore

RULES = "users:\n  A:\n    - {topic: a/#, access: read}\n"
EDITED = "users:\n  A:\n    - {topic: a/#, access: readwrite}\n"


def started(rules, **kw) -> PolicyStore:
    store = PolicyStore(str(rules), **kw)
    assert store.start().ok
    return store


def test_reloading_the_same_bytes_keeps_the_generation_and_tells_no_broker(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    store = started(rules)
    swaps = []
    store.add_listener(swaps.append)
    generation = store.status().generation
    for trigger in ("SIGHUP", "rpc", "file-change"):
        outcome = store.reload(trigger)
        assert outcome.ok and outcome.generation == generation and not outcome.kicks
    assert swaps == [] and store.status().generation == generation


def test_restoring_a_file_after_a_rejected_edit_keeps_the_generation(tmp_path, caplog):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    store = started(rules)
    swaps = []
    store.add_listener(swaps.append)
    generation = store.status().generation
    rules.write_text(RULES + "bogus: 1\n")
    assert not store.reload("SIGHUP").ok and not store.last_reload_ok
    rules.write_text(RULES)
    with caplog.at_level(logging.INFO, "policyd.store"):
        outcome = store.reload("SIGHUP")
    assert outcome.ok and outcome.generation == generation and swaps == []
    assert store.last_reload_ok and store.status().last_problems == ()
    assert "is the policy in force again" in caplog.text


def test_a_real_edit_still_makes_a_new_generation(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    store = started(rules)
    generation = store.status().generation
    rules.write_text(EDITED)
    assert store.reload("SIGHUP").generation > generation


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_generations_never_go_back_across_a_restart_with_the_clock_set_back(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    floor = str(tmp_path / "run" / "policyd.sock.generation")
    clock = Clock(2_000_000_000.0)
    first = started(rules, generations=ClockGenerations(floor, clock=clock))
    rules.write_text(EDITED)
    before = first.reload("SIGHUP").generation
    clock.now -= 3600  # the restart happens with the clock an hour behind
    second = started(rules, generations=ClockGenerations(floor, clock=clock))
    assert second.status().generation > before


def test_with_a_state_dir_a_resumed_generation_is_the_floor(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    state = str(tmp_path / "state")
    clock = Clock(2_000_000_000.0)
    first = started(rules, state=StateDir(state, str(rules)),
                    generations=ClockGenerations(f"{state}/generation", clock=clock))
    generation = first.status().generation
    clock.now -= 3600
    second = started(rules, state=StateDir(state, str(rules)),
                     generations=ClockGenerations(f"{state}/generation", clock=clock))
    assert second.status().generation == generation  # unchanged file: same generation
    rules.write_text(EDITED)
    assert second.reload("SIGHUP").generation > generation


def test_the_daemon_keeps_the_floor_next_to_its_socket_without_a_state_dir(tmp_path):
    from policyd.server.serve import ServeOptions, _generations

    generations = _generations(ServeOptions(rules="r.yaml", listen=f"unix:{tmp_path}/p.sock"))
    assert generations.floor_file == f"{tmp_path}/p.sock.generation"
    assert _generations(ServeOptions(rules="r.yaml", listen="x", state_dir=str(tmp_path / "s"))).floor_file \
        == str(tmp_path / "s" / "generation")
