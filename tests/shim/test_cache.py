"""The decision cache, driven in-process against a real daemon: hits, expiry, scope, flushes."""

import signal
import time

from harness import wait_for
from shimlib import READ, SUBSCRIBE, WRITE


def test_second_check_is_a_hit_and_deny_is_cached_too(make_daemon, make_shim):
    shim = make_shim(make_daemon())
    dev = shim.client("c1", "Device123")
    assert shim.allowed(dev, WRITE, "/device/Device123/t")
    assert shim.allowed(dev, WRITE, "/device/Device123/t")
    assert not shim.allowed(dev, WRITE, "/device/Other/t")
    assert not shim.allowed(dev, WRITE, "/device/Other/t")
    stats = shim.close()
    assert (stats["checks"], stats["misses"], stats["hits"]) == (4, 2, 2)
    assert (stats["allowed"], stats["denied"]) == (2, 2)


def test_scope_covers_a_device_subtree_but_not_a_deny_inside_it(make_daemon, make_shim):
    shim = make_shim(make_daemon())
    dev = shim.client("c9", "Device999")        # pattern only: its subtree has no deny
    for i in range(5):
        assert shim.allowed(dev, WRITE, f"/device/Device999/t/{i}")
    assert not shim.allowed(dev, WRITE, "/device/Device9999/t")   # not under the scope
    owner = shim.client("c1", "Device123")      # has a deny cutting into its subtree: no scope
    assert shim.allowed(owner, WRITE, "/device/Device123/a")
    assert shim.allowed(owner, WRITE, "/device/Device123/b")
    assert not shim.allowed(owner, WRITE, "/device/Device123/secret")
    assert not shim.allowed(owner, WRITE, "/device/Device123/secret")
    stats = shim.close()
    # Device999: 1 miss then 4 scoped hits; 1 miss outside; Device123: 3 misses, 1 hit.
    assert (stats["misses"], stats["hits"]) == (5, 5)


def test_scope_is_per_access_and_never_for_subscriptions(make_daemon, make_shim):
    shim = make_shim(make_daemon(rules="patterns:\n  - {topic: /device/%u/#, access: write}\n"))
    dev = shim.client("c9", "Device999")
    assert shim.allowed(dev, WRITE, "/device/Device999/a")
    assert not shim.allowed(dev, READ, "/device/Device999/b")     # different access: a miss
    assert not shim.allowed(dev, SUBSCRIBE, "/device/Device999/#")
    assert not shim.allowed(dev, SUBSCRIBE, "/device/Device999/+")  # filters are cached per filter
    assert shim.allowed(dev, WRITE, "/device/Device999/b")        # the write scope
    stats = shim.close()
    assert (stats["misses"], stats["hits"]) == (4, 1)


def test_entries_expire_and_hits_do_not_refresh_them(make_daemon, make_shim):
    shim = make_shim(make_daemon("--cache-ttl-ms", "400"))
    dev = shim.client("c1", "Device123")
    assert shim.allowed(dev, WRITE, "/device/Device123/t")
    deadline = time.monotonic() + 0.7
    hits = 0
    while time.monotonic() < deadline:          # hits all along the TTL must not extend it
        assert shim.allowed(dev, WRITE, "/device/Device123/t")
        hits += 1
        time.sleep(0.02)
    stats = shim.close()
    assert stats["misses"] >= 2, stats


def test_cache_ttl_option_caps_the_daemon_ttl_and_zero_size_disables(make_daemon, make_shim):
    daemon = make_daemon("--cache-ttl-ms", "60000")
    shim = make_shim(daemon, cache_ttl_s=0)
    dev = shim.client("c1", "Device123")
    for _ in range(3):
        assert shim.allowed(dev, WRITE, "/device/Device123/t")
    assert shim.close()["misses"] == 3
    shim = make_shim(daemon, cache_size=0)
    dev = shim.client("c1", "Device123")
    for _ in range(3):
        assert shim.allowed(dev, WRITE, "/device/Device123/t")
    stats = shim.close()
    assert (stats["misses"], stats["entries"]) == (3, 0)


def _grant_cached_then_policy_reloaded(make_daemon, make_shim):
    """Device123's WRITE allowed and served from the cache (TTL a minute), then a policy that
    takes it away, loaded by the daemon."""
    daemon = make_daemon("--cache-ttl-ms", "60000")
    shim = make_shim(daemon)
    dev = shim.client("c1", "Device123")
    assert shim.allowed(dev, WRITE, "/device/Device123/t")
    assert shim.allowed(dev, WRITE, "/device/Device123/t")     # a hit, with a TTL of a minute
    daemon.rules.write_text("users:\n  Device124:\n    - {topic: x, access: write}\n")
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: daemon.log().count("policy generation") >= 2, 10, "reload")
    return shim, dev


def test_a_new_generation_flushes_the_cache(make_daemon, make_shim):
    shim, dev = _grant_cached_then_policy_reloaded(make_daemon, make_shim)
    other = shim.client("c2", "Device124")
    # The new generation reaches the shim through the Watch stream or through the next answer
    # (other's miss); either way the old allow is never served again.
    shim.allowed(other, WRITE, "x")
    wait_for(lambda: (shim.tick(), not shim.allowed(dev, WRITE, "/device/Device123/t"))[1], 5,
             "the revoked grant to stop being served")
    assert not shim.allowed(dev, WRITE, "/device/Device123/t")
    stats = shim.close()
    assert stats["hits"] >= 1 and stats["misses"] >= 3, stats


def test_a_generation_from_the_watch_stream_alone_stops_hits_of_the_old_one(make_daemon, make_shim):
    # No miss and no TICK brings the new generation here: only the Watch thread, which raises
    # the shared generation. The hit path itself must notice it before serving an old answer.
    shim, dev = _grant_cached_then_policy_reloaded(make_daemon, make_shim)
    wait_for(lambda: not shim.allowed(dev, WRITE, "/device/Device123/t"), 10,
             "the revoked grant to stop being served")
    stats = shim.close()
    assert stats["hits"] >= 1 and stats["misses"] == 2, stats


def test_disconnect_drops_the_clients_entries_only(make_daemon, make_shim):
    shim = make_shim(make_daemon())
    a = shim.client("ca", "Device123")
    b = shim.client("cb", "Device124")
    assert shim.allowed(a, WRITE, "/device/Device123/t")
    assert shim.allowed(b, WRITE, "/device/Device124/t")
    shim.disconnect(shim.client("ca", "Device123"))   # a different struct, same identity
    assert shim.allowed(a, WRITE, "/device/Device123/t")      # miss again
    assert shim.allowed(b, WRITE, "/device/Device124/t")      # still a hit
    stats = shim.close()
    assert (stats["misses"], stats["hits"]) == (3, 1)


def test_identities_are_never_confused_in_keys(make_daemon, make_shim):
    shim = make_shim(make_daemon())
    ab = shim.client("c", "ab")
    assert shim.allowed(ab, WRITE, "t")
    # Same bytes joined ("ab" + "c" vs "a" + "bc"): must be a different key.
    assert not shim.allowed(shim.client("bc", "a"), WRITE, "t")
    anon = shim.client("p1", None)
    assert shim.allowed(anon, READ, "public/x")
    assert not shim.allowed(shim.client("p1", ""), READ, "public/x")   # empty username is not anonymous
    hostile = shim.client("h", "Device+")
    assert not shim.allowed(hostile, WRITE, "/device/Device+/t")
    assert not shim.allowed(hostile, WRITE, "/device/Device+/t")
    stats = shim.close()
    assert (stats["misses"], stats["hits"]) == (5, 1)


def test_bounded_eviction(make_daemon, make_shim):
    shim = make_shim(make_daemon(), cache_size=4)
    dev = shim.client("c1", "Device123")
    for i in range(10):
        assert shim.allowed(dev, WRITE, f"/device/Device123/{i}")
    assert shim.allowed(dev, WRITE, "/device/Device123/9")    # newest kept
    assert shim.allowed(dev, WRITE, "/device/Device123/0")    # oldest evicted
    stats = shim.close()
    assert stats["entries"] <= 4 and stats["evictions"] >= 6
    assert (stats["misses"], stats["hits"]) == (11, 1)


def test_a_reused_client_pointer_never_answers_for_its_old_identity(make_daemon, make_shim):
    """Checks find a client's entries through its pointer; the pointer alone must never do."""
    shim = make_shim(make_daemon())
    c = shim.client("c9", "Device999")
    assert shim.allowed(c, WRITE, "/device/Device999/a")        # miss: scope /device/Device999/#
    assert shim.allowed(c, WRITE, "/device/Device999/b")        # hit
    for client_id, username in [("c8", "Device888"), ("c9", "Device998"), ("c9", None), ("c9", ""),
                                ("Device999", "c9"), ("c", "9Device999")]:
        shim.reidentify(c, client_id, username)
        assert not shim.allowed(c, WRITE, "/device/Device999/c"), (client_id, username)
    shim.reidentify(c, "c9", "Device999")                        # its entries are still its own
    assert shim.allowed(c, WRITE, "/device/Device999/d")        # hit
    stats = shim.close()
    assert (stats["misses"], stats["hits"]) == (7, 2)


def test_a_pointer_reused_after_disconnect_starts_empty(make_daemon, make_shim):
    shim = make_shim(make_daemon())
    c = shim.client("c9", "Device999")
    admin = shim.client("a1", "admin")
    assert shim.allowed(c, WRITE, "/device/Device999/a")        # miss
    assert shim.allowed(admin, READ, "/device/Device999/a")     # miss: scope #
    shim.disconnect(c)
    shim.reidentify(c, "c8", "Device888")                        # a new connection at the same address
    assert not shim.allowed(c, WRITE, "/device/Device999/a")    # miss
    assert not shim.allowed(c, READ, "/device/Device999/a")     # miss: never the admin's answer
    shim.reidentify(c, "c9", "Device999")                        # the old identity again: dropped
    assert shim.allowed(c, WRITE, "/device/Device999/a")        # miss
    assert shim.allowed(admin, READ, "/device/Device999/b")     # hit: the admin kept its entries
    stats = shim.close()
    assert (stats["misses"], stats["hits"]) == (5, 1)


def test_one_pointer_cycling_through_identities_keeps_each_ones_answers(make_daemon, make_shim):
    """Mosquitto's stand-in client for retained messages: one struct, a publisher at a time."""
    shim = make_shim(make_daemon())
    stand_in = shim.client("x", "x")
    devices = [f"Device{900 + i}" for i in range(20)]
    for _ in range(3):
        for device in devices:
            shim.reidentify(stand_in, f"c-{device}", device)
            assert shim.allowed(stand_in, WRITE, f"/device/{device}/t")
            assert not shim.allowed(stand_in, WRITE, f"/device/{devices[0] if device != devices[0] else devices[1]}/t")
    stats = shim.close()
    assert (stats["misses"], stats["hits"]) == (40, 80)


def test_a_first_miss_brings_the_clients_other_allows(make_daemon, make_shim):
    """A device's first check (its SUBSCRIBE) brings its READ and WRITE scopes: its first publish
    and first delivery need no call. Only provable ones: a deny cutting into the grant, none."""
    shim = make_shim(make_daemon())
    dev = shim.client("c9", "Device999")
    assert shim.allowed(dev, SUBSCRIBE, "/device/Device999/#")        # miss, scopes sent ahead
    assert shim.allowed(dev, WRITE, "/device/Device999/t")            # hit
    assert shim.allowed(dev, READ, "/device/Device999/t/x")           # hit
    assert not shim.allowed(dev, WRITE, "/device/Device9999/t")       # miss: not under them
    owner = shim.client("c1", "Device123")                            # /secret is denied inside
    assert shim.allowed(owner, SUBSCRIBE, "/device/Device123/#")      # miss, nothing provable ahead
    assert shim.allowed(owner, WRITE, "/device/Device123/t")          # miss
    assert not shim.allowed(owner, WRITE, "/device/Device123/secret")  # miss, denied
    admin = shim.client("a1", "admin")
    assert shim.allowed(admin, SUBSCRIBE, "/device/#")                # miss: superuser, # ahead
    assert shim.allowed(admin, READ, "/device/Device999/t")           # hit
    stats = shim.close()
    assert (stats["misses"], stats["hits"]) == (6, 3)


def test_an_access_type_mosquitto_does_not_define_is_denied_though_the_client_has_scopes(make_daemon, make_shim):
    shim = make_shim(make_daemon())
    dev = shim.client("c9", "Device999")
    assert shim.allowed(dev, WRITE, "/device/Device999/t")    # brings its READ and WRITE scopes
    assert shim.allowed(dev, READ, "/device/Device999/t")     # served from them
    for access in (0, 3, 16, 0x7fffffff, -1):
        assert not shim.allowed(dev, access, "/device/Device999/t")
    stats = shim.close()
    assert stats["hits"] == 1 and stats["rejected"] == 5, stats
