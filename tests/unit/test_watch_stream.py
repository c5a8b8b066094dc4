"""Policy.Watch on the daemon side: swap history, replay on reconnect, event splitting."""

import grpc
import pytest
from harness import PolicyDaemon, make_workdir

from policyd.server import watch_stream
from policyd.server.store import PolicyStore, PolicySwap
from policyd.v1 import policy_pb2 as pb
from policyd.v1 import policy_pb2_grpc as pb_grpc

ALL = "users:\n  A:\n    - {topic: a/#, access: read}\n  B:\n    - {topic: b/#, access: read}\n"
NO_A = "users:\n  B:\n    - {topic: b/#, access: read}\n"
NONE = "users: {}\n"


@pytest.fixture
def store(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(ALL)
    s = PolicyStore(str(rules))
    assert s.reload("start").ok
    return s


def reload(store, text):
    open(store.rules_file, "w").write(text)
    outcome = store.reload("test")
    assert outcome.ok
    return outcome


def test_listeners_hear_each_swap_with_its_kicks(store):
    heard = []
    store.add_listener(heard.append)
    g0 = store.status().generation
    g1 = reload(store, NO_A).generation
    store.remove_listener(heard.append)
    reload(store, ALL)
    assert heard == [PolicySwap(g1, frozenset({"A"}), g0)]


def test_a_returning_subscriber_gets_what_it_missed(store):
    g0 = store.status().generation
    g1 = reload(store, NO_A).generation
    g2 = reload(store, NONE).generation
    assert store.subscribe(lambda s: None, g0) == (g2, frozenset({"A", "B"}))
    assert store.subscribe(lambda s: None, g1) == (g2, frozenset({"B"}))
    assert store.subscribe(lambda s: None, g2) == (g2, frozenset())
    assert store.subscribe(lambda s: None, 12345) == (g2, None)  # not remembered
    assert store.subscribe(lambda s: None, 0) == (g2, None)       # a new broker: nothing to replay


def test_failed_reloads_leave_no_trace_in_the_history(store):
    g0 = store.status().generation
    open(store.rules_file, "w").write("users: [\n")
    assert not store.reload("test").ok
    assert store.subscribe(lambda s: None, g0) == (g0, frozenset())


def test_long_kick_lists_are_split_into_events_of_one_generation():
    names = frozenset(f"D{i:04d}" for i in range(1200))
    events = list(watch_stream.events_of(PolicySwap(7, names)))
    assert [len(e.kick_usernames) for e in events] == [500, 500, 200]
    assert {e.generation for e in events} == {7}
    assert {n.decode() for e in events for n in e.kick_usernames} == names
    assert [e.kick_usernames for e in watch_stream.events_of(PolicySwap(8, frozenset()))] == [[]]


def test_watch_over_the_socket_replays_missed_kicks():
    work = make_workdir("policyd-watch-")
    daemon = PolicyDaemon(work, ALL, "--no-watch").start()
    try:
        with grpc.insecure_channel(daemon.address) as channel:
            stub = pb_grpc.PolicyStub(channel)
            first = next(iter(stub.Watch(pb.WatchRequest(broker_id="t"), timeout=10)))
            daemon.rules.write_text(NO_A)
            with grpc.insecure_channel(daemon.admin_address) as admin_channel:
                assert pb_grpc.AdminStub(admin_channel).Reload(pb.ReloadRequest(), timeout=10).ok
            stream = stub.Watch(pb.WatchRequest(broker_id="t", known_generation=first.generation), timeout=10)
            event = next(iter(stream))
            assert event.generation > first.generation and list(event.kick_usernames) == [b"A"]
            stream.cancel()
    finally:
        daemon.stop()
    assert "replaying 1 kicks" in daemon.log()


def test_a_failing_kick_diff_still_swaps_and_is_counted(store, monkeypatch):
    from policyd.server import store as store_module

    def broken(old, new):
        raise TypeError("bug")

    monkeypatch.setattr(store_module, "usernames_to_kick", broken)
    before = store.status().generation
    outcome = reload(store, NO_A)
    assert outcome.generation > before and outcome.kicks == frozenset()
    assert store.kick_errors == 1 and "A" not in store.current.users


def test_a_broker_from_a_generation_nobody_remembers_is_told_to_kick_everyone(store):
    events = list(watch_stream.opening_events("t", 12345, 99, None))
    assert events[0].replay_incomplete and events[0].kick_all_named and events[0].kick_anonymous
    assert list(events[0].kick_usernames) == [] and events[0].generation == 99


def test_a_new_broker_or_a_proven_replay_kicks_only_what_was_missed():
    first = next(watch_stream.opening_events("t", 0, 99, None))  # a new broker: nothing to replay
    assert not (first.replay_incomplete or first.kick_all_named or first.kick_anonymous)
    first = next(watch_stream.opening_events("t", 98, 99, frozenset({"A"})))
    assert not (first.replay_incomplete or first.kick_all_named) and list(first.kick_usernames) == [b"A"]


def test_the_policy_source_is_asked_what_the_store_does_not_remember(store):
    asked = []
    store.missed_from_source = lambda known, gen: asked.append((known, gen)) or frozenset({"B"})
    g = store.status().generation
    assert store.missed_between(12345, g) == frozenset({"B"}) and asked == [(12345, g)]
    assert store.missed_between(0, g) is None  # a new broker asks for nothing
    store.missed_from_source = lambda known, gen: 1 / 0
    assert store.missed_between(12345, g) is None  # a failure is unprovable, never "nothing missed"


def test_a_broker_from_another_daemon_with_the_same_file_missed_nothing(store, tmp_path):
    other = PolicyStore(store.rules_file)  # another daemon (or a restart): its own generations
    assert other.reload("start").ok
    mine = store.open_stream(lambda s: None)
    assert mine.digest and mine.missed is None  # a new broker: nothing asked
    theirs = other.open_stream(lambda s: None, 12345, mine.digest)
    assert theirs.missed == frozenset() and theirs.digest == mine.digest
    reload(other, NO_A)  # the file changed meanwhile: what that change kicked
    assert other.open_stream(lambda s: None, 12345, mine.digest).missed == frozenset({"A"})
    other.follows = "etcd://x/p"  # a fleet policy: the file digest does not name its device entries
    assert other.open_stream(lambda s: None, 1, b"").digest == b""


def test_a_broker_from_before_a_restart_gets_the_kicks_since_the_daemon_had_its_policy(store):
    before = store.open_stream(lambda s: None)  # what the broker last heard from the old process
    restarted = PolicyStore(store.rules_file)
    assert restarted.reload("start").ok
    reload(restarted, NO_A)
    reload(restarted, NONE)
    start = restarted.open_stream(lambda s: None, 12345, before.digest)
    assert start.missed == frozenset({"A", "B"})
    assert restarted.open_stream(lambda s: None, 12345, b"\x01" * 32).missed is None
