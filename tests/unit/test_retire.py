"""Replaced policies: retired without trusting reference counts, and a retired
policy never answers allow (server/retire.py, CompiledPolicy.retire)."""

import gc
import sys
import weakref

from policyd.engine import Access, Request, compile_policy, parse_text
from policyd.server.service import PolicyService
from policyd.server.store import PolicyStore
from policyd.v1 import policy_pb2 as pb

# d1's own deny rule must beat its group's allow: the case where tables emptied
# in the wrong order (own rules gone, groups' still there) turned a deny into an allow.
RULES = """users:
  d1:
    - {topic: g/secret, access: deny}
groups:
  g:
    members: [d1]
    rules:
      - {topic: g/#, access: readwrite}
"""
SECRET = Request("d1", "c1", "g/secret", Access.WRITE)


def test_a_held_policy_denies_once_retired_even_if_reference_counts_under_report(tmp_path, monkeypatch):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    store = PolicyStore(str(rules))
    store._retirement.grace_s = 0.0  # noqa: SLF001
    store.start()
    held = store.current  # a check in flight holds the policy it started with
    assert held.decide(SECRET).reason == "deny-rule"
    # Python 3.14 borrows references to locals: counts read one lower than on 3.11.
    monkeypatch.setattr(sys, "getrefcount", lambda obj: 1)
    rules.write_text(RULES + "# edited\n")
    assert store.reload("test").ok
    assert store._retirement.wait_idle(5)  # noqa: SLF001
    decision = held.decide(SECRET)
    assert not decision.allowed and decision.reason.startswith("retired-policy")
    assert not held.decide(Request("d1", "c1", "g/open", Access.WRITE)).allowed  # used by mistake: deny
    assert not held.explain(Request("d1", "c1", "g/open", Access.WRITE)).allowed
    assert store.current.decide(Request("d1", "c1", "g/open", Access.WRITE)).allowed


def test_every_step_of_a_retirement_denies():
    policy = compile_policy(parse_text(RULES.encode()))
    policy.users.get("d1")
    steps = policy.retire(chunk=1)
    for _ in steps:
        assert not policy.decide(SECRET).allowed
        assert not policy.decide(Request("d1", "c1", "g/open", Access.WRITE)).allowed
    assert policy.users._specs == policy.users._groups == policy.users._compiled == {}  # noqa: SLF001


def test_a_replaced_policy_is_retired_after_the_grace_period_and_freed(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    store = PolicyStore(str(rules))
    store._retirement.grace_s = 0.3  # noqa: SLF001
    store.start()
    old = weakref.ref(store.current)
    rules.write_text(RULES + "# edited\n")
    store.reload("test")
    assert not old().retired  # in the grace period it still answers whatever holds it
    assert store._retirement.wait_idle(5)  # noqa: SLF001
    gc.collect()
    assert old() is None
    assert not store.current.retired


class _Store:
    """A store whose first `current` is a policy retired under the check."""

    def __init__(self, *policies):
        self.policies = list(policies)
        self.kick_sources = []

    @property
    def current(self):
        return self.policies.pop(0) if len(self.policies) > 1 else self.policies[0]


def test_a_check_that_meets_a_retired_policy_is_answered_by_the_policy_in_force():
    retired = compile_policy(parse_text(RULES.encode())).with_generation(1)
    list(retired.retire())
    in_force = compile_policy(parse_text(b"users:\n  d1:\n    - {topic: g/open, access: write}\n")).with_generation(2)
    service = PolicyService(_Store(retired, in_force), 5000)
    answer = service._check(pb.CheckAclRequest(  # noqa: SLF001
        has_username=True, username=b"d1", client_id=b"c1", topic=b"g/open", access=Access.WRITE))
    assert answer.result == pb.RESULT_ALLOW and answer.generation == 2


def test_a_check_meeting_only_retired_policies_is_denied():
    retired = compile_policy(parse_text(b"users:\n  d1:\n    - {topic: g/open, access: write}\n"))
    list(retired.retire())
    service = PolicyService(_Store(retired), 5000)
    answer = service._check(pb.CheckAclRequest(  # noqa: SLF001
        has_username=True, username=b"d1", client_id=b"c1", topic=b"g/open", access=Access.WRITE))
    assert answer.result == pb.RESULT_DENY


def test_loads_leave_nothing_frozen_and_cycles_collectable(tmp_path):
    """gc.freeze() on every load made every cycle alive at that moment immortal."""

    class Cycle:
        pass

    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    store = PolicyStore(str(rules))
    store.start()
    cycle = Cycle()
    cycle.me = cycle
    alive = weakref.ref(cycle)
    del cycle
    for i in range(5):
        rules.write_text(RULES + f"# {i}\n")
        assert store.reload("test").ok
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert alive() is None
