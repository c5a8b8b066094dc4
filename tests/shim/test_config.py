"""Plugin options: the new ones parse, bad values refuse to start with a clear line."""

import pytest

from shimlib import Shim


@pytest.mark.parametrize("key, value, why", [
    ("policyd_on_error", "allow", "not one of the allowed values"),
    ("policyd_cache_size", "-1", "expected a decimal integer"),
    ("policyd_cache_ttl_s", "86401", "must be between 0 and 86400"),
    ("policyd_breaker_threshold", "0", "must be between 1 and 1000"),
    ("policyd_stats_intervall_s", "1", "unknown option"),
])
def test_bad_values_fail_init_and_say_why(stub_so, key, value, why):
    with pytest.raises(RuntimeError) as err:
        Shim(stub_so, {"policyd_address": "unix:/nonexistent.sock", key: value})
    assert why in str(err.value) and key in str(err.value)


def test_all_options_together(stub_so):
    shim = Shim(stub_so, {
        "policyd_address": "unix:/nonexistent.sock", "policyd_timeout_ms": "50",
        "policyd_cache_size": "10", "policyd_cache_ttl_s": "5", "policyd_on_error": "stale",
        "policyd_breaker_threshold": "2", "policyd_breaker_cooldown_ms": "500",
        "policyd_stats_interval_s": "0", "policyd_broker_id": "b1"})
    assert any("cache 10 entries up to 5 s, on_error stale, breaker after 2 deadline misses for 500 ms"
               in line for line in shim.logs())
    assert shim.close()["checks"] == 0


@pytest.mark.parametrize("key, value, why", [
    ("policyd_cache_bytes", "1000", "must be between 65536 and"),
    ("policyd_cache_client_entries", "0", "must be between 1 and"),
    ("policyd_stale_max_age_s", "0", "must be between 1 and 86400"),
    ("policyd_keepalive_s", "0", "must be between 1 and 3600"),
    ("policyd_insecure_plaintext", "yes", "not one of the allowed values"),
])
def test_bounds_options_refuse_bad_values(stub_so, key, value, why):
    with pytest.raises(RuntimeError) as err:
        Shim(stub_so, {"policyd_address": "unix:/nonexistent.sock", key: value})
    assert why in str(err.value) and key in str(err.value)


@pytest.mark.parametrize("address", [
    "10.1.2.3:7001", "policyd.example:7001", "dns:///policyd.example:7001", "ipv4:127.0.0.1:7001,10.0.0.1:7001",
    "ipv6:[2001:db8::1]:7001", "dns://8.8.8.8/localhost:7001", "0.0.0.0:7001", "[::]:7001",
])
def test_plaintext_to_another_host_is_refused(stub_so, address):
    with pytest.raises(RuntimeError) as err:
        Shim(stub_so, {"policyd_address": address})
    assert "plaintext gRPC is only allowed to a unix: socket or a loopback address" in str(err.value)


@pytest.mark.parametrize("address", [
    "unix:/run/policyd.sock", "127.0.0.1:7001", "localhost:7001", "ipv4:127.0.0.1:7001,127.0.0.2:7002",
    "ipv6:[::1]:7001", "dns:///localhost:7001", "[::1]:7001",
])
def test_plaintext_to_this_host_is_accepted(stub_so, address):
    Shim(stub_so, {"policyd_address": address}).close()


def test_plaintext_elsewhere_needs_the_explicit_option_and_warns(stub_so):
    shim = Shim(stub_so, {"policyd_address": "10.1.2.3:7001", "policyd_insecure_plaintext": "true"})
    assert any("anyone on the path can answer for policyd" in line for line in shim.logs())
    shim.close()
