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
