"""The fleet's values and the one-device overlay (no etcd: policyd.fleet.layout is pure)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.engine import Access, PolicyLoadError, Request
from policyd.engine.diff import usernames_to_kick, usernames_to_kick_among
from policyd.fleet.etcd import EtcdSource, prefix_end
from policyd.fleet.layout import (BasePointer, Keys, build_policy, device_value, overlay, read_device)

BASE = b"""\
superusers: [root]
users:
  Alpha:
    - topic: /device/Alpha/#
      access: readwrite
  Beta:
    - topic: /device/Beta/#
      access: read
patterns:
  - topic: /shared/%u
    access: write
"""


def allowed(policy, user, topic, access=Access.WRITE) -> bool:
    return policy.decide(Request(user, f"{user}-c", topic, access)).allowed


def entry(name, rules=None, revoked=None):
    return read_device(name, device_value(rules, revoked), f"/p/policy/devices/{name}")


def test_device_entry_replaces_the_files_rules_for_that_device_only():
    policy, base = build_policy(BASE, {}, "base")
    changed = overlay(policy, base, {"Beta": entry("Beta", [("/device/Beta/#", "readwrite")])}, ())
    assert allowed(changed, "Beta", "/device/Beta/x") and not allowed(policy, "Beta", "/device/Beta/x")
    assert allowed(changed, "Alpha", "/device/Alpha/x")
    assert changed.rule_count == policy.rule_count


def test_new_device_and_reset():
    policy, base = build_policy(BASE, {}, "base")
    added = overlay(policy, base, {"Gamma": entry("Gamma", [("/g/#", "read")])}, ())
    assert "Gamma" in added.users and added.identity_count == policy.identity_count + 1
    back = overlay(added, base, {}, ["Gamma"])
    assert "Gamma" not in back.users and back.identity_count == policy.identity_count


def test_revoked_device_is_denied_everything_even_a_superuser_and_reset_restores():
    policy, base = build_policy(BASE, {}, "base")
    revoked = overlay(policy, base, {"Alpha": entry("Alpha", revoked="stolen"),
                                     "root": entry("root", revoked="left")}, ())
    assert not allowed(revoked, "Alpha", "/device/Alpha/x")
    assert not allowed(revoked, "Alpha", "/shared/Alpha")  # the pattern too: deny wins
    assert not allowed(revoked, "root", "/anything")
    assert usernames_to_kick_among(policy, revoked, ["Alpha", "root"]) == {"Alpha", "root"}
    restored = overlay(revoked, base, {}, ["Alpha", "root"])
    assert allowed(restored, "Alpha", "/device/Alpha/x") and allowed(restored, "root", "/anything")


def test_revoked_identities_follow_each_device_change():
    policy, base = build_policy(BASE, {"Alpha": entry("Alpha", revoked="stolen")}, "base")
    assert policy.revoked_identities == {"Alpha"}
    more = overlay(policy, base, {"Beta": entry("Beta", revoked="lost")}, ())
    assert more.revoked_identities == {"Alpha", "Beta"} and policy.revoked_identities == {"Alpha"}
    reset = overlay(more, base, {"Alpha": entry("Alpha", [("/a/#", "read")])}, ["Beta"])
    assert reset.revoked_identities == frozenset()
    assert reset.with_generation(7).revoked_identities == frozenset()


def test_a_revoked_device_is_refused_at_connect_and_its_checks_end_the_connection():
    from policyd.identity.verify import checked_client
    from policyd.v1 import policy_pb2 as pb

    policy, base = build_policy(BASE, {"Alpha": entry("Alpha", revoked="stolen")}, "base")

    def check(user, provenance=pb.PROVENANCE_BROKER):
        return checked_client(pb.CheckAclRequest(has_username=True, username=user.encode(), topic=b"t",
                                                 access=pb.ACCESS_WRITE, provenance=provenance), policy)
    assert check("Alpha").refusal.kind == "revoked-device"
    assert check("Alpha", pb.PROVENANCE_PASSWORD).refusal.kind == "revoked-device"
    assert check("Alpha", pb.PROVENANCE_UNKNOWN).refusal is None  # a retained message's publisher
    assert check("Beta").refusal is None


def test_retiring_the_old_policy_leaves_the_new_one_whole():
    policy, base = build_policy(BASE, {}, "base")
    assert allowed(policy, "Alpha", "/device/Alpha/x")  # compiled once: the table is shared if copied wrongly
    changed = overlay(policy, base, {"Beta": entry("Beta", [("/b", "write")])}, ())
    for _ in policy.retire(chunk=1):
        pass
    assert allowed(changed, "Alpha", "/device/Alpha/x") and allowed(changed, "Beta", "/b")


@pytest.mark.parametrize("name, value, message", [
    ("a+b", device_value([("x", "read")]), "'+'"),
    ("Ok", b"{not json", "not a device entry"),
    ("Ok", b'{"rules": [["x/#/y", "read"]]}', "'#' must be the last level"),
    ("Ok", b'{"rules": [["x", "sometimes"]]}', "sometimes"),
    ("Ok", b'{"revoked": 5}', "revoked must be a text"),
])
def test_bad_device_entries_are_refused_naming_the_key(name, value, message):
    with pytest.raises(PolicyLoadError) as exc:
        read_device(name, value, f"/p/policy/devices/{name}")
    text = "\n".join(map(str, exc.value.problems))
    assert message in text and "/p/policy/devices/" in text


TOPICS = st.sampled_from(["/device/X/#", "/a", "/a/#", "#", "/shared/%u"])
ACCESS = st.sampled_from(["read", "write", "readwrite", "deny"])
RULES = st.lists(st.tuples(TOPICS, ACCESS), max_size=3)


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(["Alpha", "Beta", "Gamma", "root"]), rules=RULES, revoke=st.booleans())
def test_kicks_of_one_device_change_equal_the_full_diff(name, rules, revoke):
    policy, base = build_policy(BASE, {}, "base")
    changed = overlay(policy, base, {name: entry(name, rules, "x" if revoke else None)}, ())
    assert usernames_to_kick_among(policy, changed, [name]) == usernames_to_kick(policy, changed)


def test_base_pointer_and_keys():
    keys = Keys("/p")
    assert keys.device_name(keys.device("Dev")) == "Dev"
    assert keys.device_name(keys.head) is None
    assert not keys.chunk("ab" * 32, 0).startswith(keys.policy)  # daemons never watch the chunks
    with pytest.raises(PolicyLoadError):
        BasePointer.decode(b'{"sha256": "short", "chunks": 1, "size": 1}')
    assert prefix_end(b"/p/") == b"/p0" and prefix_end(b"\xff") == b"\0"


@pytest.mark.parametrize("url, target", [
    ("etcd://127.0.0.1:2379/policyd", "127.0.0.1:2379"),
    ("etcd://127.0.0.1:2379,127.0.0.2:2379/p/q/", "ipv4:127.0.0.1:2379,127.0.0.2:2379"),
    ("etcd://etcd.example:2379/p", "etcd.example:2379"),
])
def test_source_urls(url, target):
    assert EtcdSource.parse(url).grpc_target() == target


@pytest.mark.parametrize("url", ["etcd://127.0.0.1:2379", "etcd://127.0.0.1:2379/", "http://h:1/p",
                                 "etcd://h/p", "etcd://h:99999/p", "etcd://h:1/p?x=1"])
def test_bad_source_urls(url):
    with pytest.raises(ValueError):
        EtcdSource.parse(url)


def test_several_members_by_name_are_refused():
    with pytest.raises(ValueError, match="IP address"):
        EtcdSource.parse("etcd://a.example:1,b.example:1/p").grpc_target()
