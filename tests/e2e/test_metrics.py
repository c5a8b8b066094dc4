"""Metrics, health checks, the decision log and dry-run, scraped during real traffic.

Real mosquitto with TLS and the plugin, real `policyd serve --metrics-listen`,
real paho clients. Counts are exact: each denied or allowed request comes from
a different identity, so no decision cache in the shim can answer one from
another, and every request reaches the daemon exactly once.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import Broker, BrokerConfig, Device, Pki, PolicyDaemon, free_port, make_workdir, run_policyd, wait_for
from conftest import SEED_RULES

NOT_AUTHORIZED = 0x87
INTRUDERS = ("Intruder1", "Intruder2", "Intruder3")
BROKER_ID = "e2e-metrics-broker"
# The shim reports its counters every second under a known name.
SHIM_OPTIONS = f"auth_opt_policyd_stats_interval_s 1\nauth_opt_policyd_broker_id {BROKER_ID}\n"


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from one /metrics scrape."""
    body = http_get(port, "/metrics")[1]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def value(metrics, name: str, **labels) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def decisions(metrics, result: str, access: str) -> float:
    return value(metrics, "policyd_decisions_total", result=result, access=access)


class Stack:
    def __init__(self, *daemon_args: str):
        self.workdir = make_workdir("policyd-metrics-")
        self.metrics_port = free_port()
        self.decision_log = self.workdir / "decisions.jsonl"
        self.pki = Pki(self.workdir / "pki").issue_base()
        self.daemon = PolicyDaemon(self.workdir, SEED_RULES, "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
                                   "--decision-log", str(self.decision_log), *daemon_args).start()
        # The sockets appear when bound; the daemon is ready a moment later (what /readyz is for).
        wait_for(lambda: self.ready(), 15, "policyd /readyz")
        self.broker = Broker(self.workdir, self.pki, self.daemon, BrokerConfig(extra=SHIM_OPTIONS)).start()
        self.devices: list[Device] = []

    def ready(self) -> bool:
        try:
            return http_get(self.metrics_port, "/readyz")[0] == 200
        except OSError:  # not listening yet
            return False

    def device(self, cn: str) -> Device:
        dev = Device(self.broker, cn).connect()
        self.devices.append(dev)
        return dev

    def close(self) -> None:
        for dev in self.devices:
            dev.close()
        self.broker.stop()
        self.daemon.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def decision_lines(self) -> list[dict]:
        text = self.decision_log.read_text() if self.decision_log.exists() else ""
        # Without the daemon's own readiness check (server/readiness.py), logged like any check.
        return [e for line in text.splitlines()
                if (e := json.loads(line)).get("client_id") != "policyd-readiness-probe"]


@pytest.fixture(scope="module")
def stack():
    s = Stack()
    yield s
    s.close()


def test_health_and_readiness_answer(stack):
    assert http_get(stack.metrics_port, "/healthz") == (200, "ok\n")
    assert http_get(stack.metrics_port, "/readyz") == (200, "ready\n")
    assert http_get(stack.metrics_port, "/nope")[0] == 404


def test_metrics_count_the_decisions_this_test_caused(stack):
    before = scrape(stack.metrics_port)
    for cn in INTRUDERS:
        intruder = stack.device(cn)
        # its own topic first: a device's first miss also brings its scopes, so an own publish
        # after the denied ones would be a cache hit, not a decision
        assert intruder.publish(f"/device/{cn}/status", b"up") == 0
        assert intruder.publish("/device/Device123/temperature", b"spoofed") == NOT_AUTHORIZED
        assert intruder.subscribe("#") == NOT_AUTHORIZED
    k = len(INTRUDERS)
    after = scrape(stack.metrics_port)

    def delta(result, access):
        return decisions(after, result, access) - decisions(before, result, access)

    assert delta("deny", "write") == k
    assert delta("deny", "subscribe") == k
    assert delta("allow", "write") == k
    assert delta("allow", "subscribe") == 0 and delta("deny", "read") == 0
    latency = (value(after, "policyd_decision_duration_seconds_count")
               - value(before, "policyd_decision_duration_seconds_count"))
    assert latency == 3 * k  # every check timed once
    assert value(after, "policyd_decision_duration_seconds_bucket", le="+Inf") == \
        value(after, "policyd_decision_duration_seconds_count")
    assert value(after, "policyd_dry_run") == 0


def test_decision_log_has_one_line_per_daemon_decision(stack):
    def intruder_lines():
        return [e for e in stack.decision_lines() if e["identity"] in INTRUDERS]

    lines = wait_for(lambda: len(intruder_lines()) >= 3 * len(INTRUDERS) and intruder_lines(), 5, "decision log")
    denied_writes = [e for e in lines if e["result"] == "deny" and e["access"] == "write"]
    assert sorted(e["identity"] for e in denied_writes) == sorted(INTRUDERS)
    entry = denied_writes[0]
    assert entry["topic"] == "/device/Device123/temperature"
    assert entry["client_id"] == f"{entry['identity']}-client"
    assert entry["rule"].startswith("default-deny")
    status = run_policyd("status", "--address", stack.daemon.admin_address).stdout
    assert f"generation: {entry['generation']}" in status
    assert {"time", "identity", "client_id", "topic", "access", "result", "rule", "generation"} <= entry.keys()


def test_shim_counters_reported_by_the_broker_are_exported(stack):
    assert stack.device("Reporter").publish("/device/Reporter/ping", b"x") == 0

    def reported():
        m = scrape(stack.metrics_port)
        return m if value(m, "policyd_shim_checks_total", broker=BROKER_ID) >= 1 else None

    metrics = wait_for(reported, 10, "the shim's ReportStats")
    assert value(metrics, "policyd_shims_connected") == 1
    assert value(metrics, "policyd_shim_breaker_open", broker=BROKER_ID) == 0
    daemon_checks = sum(v for (name, _), v in metrics.items() if name == "policyd_decisions_total")
    shim = {n: value(metrics, f"policyd_shim_{n}_total", broker=BROKER_ID)
            for n in ("checks", "cache_hits", "cache_misses", "errors")}
    # Every check the daemon answered was a shim cache miss (reports lag, so at most).
    assert shim["cache_misses"] <= daemon_checks and shim["checks"] >= shim["cache_misses"]
    # ... and each one the shim asked about was timed on the broker's thread.
    timed = value(metrics, "policyd_shim_miss_round_trip_seconds_count", broker=BROKER_ID)
    assert 1 <= timed <= shim["cache_misses"]
    assert value(metrics, "policyd_shim_miss_round_trip_seconds_bucket", broker=BROKER_ID, le="+Inf") == timed
    assert 0 < value(metrics, "policyd_shim_miss_round_trip_seconds_sum", broker=BROKER_ID) < timed * 5.0
    status = run_policyd("status", "--address", stack.daemon.admin_address).stdout
    assert "shims:      1 connected, 1 known" in status
    assert f"  {BROKER_ID}: connected" in status


def test_policy_and_reload_metrics_follow_reloads(stack):
    before = scrape(stack.metrics_port)
    assert value(before, "policyd_reloads_total") >= 1
    assert value(before, "policyd_policy_generation") > 0
    validated = run_policyd("validate", str(stack.daemon.rules)).stdout
    assert f"{int(value(before, 'policyd_policy_identities'))} identities, " \
           f"{int(value(before, 'policyd_policy_rules'))} rules" in validated

    stack.daemon.rules.write_text("users: [not, a, mapping]\n")
    assert run_policyd("reload", "--address", stack.daemon.admin_address, check=False).returncode == 1
    failed = scrape(stack.metrics_port)
    assert value(failed, "policyd_reload_failures_total") >= value(before, "policyd_reload_failures_total") + 1
    assert value(failed, "policyd_last_reload_failed") == 1
    assert value(failed, "policyd_policy_generation") == value(before, "policyd_policy_generation")

    stack.daemon.rules.write_text(SEED_RULES + "\n# touched\n")
    run_policyd("reload", "--address", stack.daemon.admin_address)
    fixed = scrape(stack.metrics_port)
    assert value(fixed, "policyd_reloads_total") >= value(before, "policyd_reloads_total") + 1
    assert value(fixed, "policyd_last_reload_failed") == 0
    assert value(fixed, "policyd_policy_generation") > value(before, "policyd_policy_generation")


def test_dry_run_allows_counts_and_logs_what_it_would_deny():
    s = Stack("--dry-run", "--log-format", "json")
    try:
        intruder = s.device("Device999")
        assert intruder.publish("/device/Device123/temperature", b"let through") == 0
        metrics = scrape(s.metrics_port)
        assert value(metrics, "policyd_dry_run") == 1
        assert value(metrics, "policyd_dry_run_would_deny_total", access="write") == 1
        assert decisions(metrics, "allow", "write") == 1 and decisions(metrics, "deny", "write") == 0
        wait_for(lambda: "dry-run: would deny write user='Device999'" in s.daemon.log(), 5, "dry-run log line")
        entry = wait_for(lambda: s.decision_lines(), 5, "decision log")[0]
        assert (entry["result"], entry["answered"], entry["dry_run"]) == ("deny", "allow", True)
        daemon_log = [json.loads(line) for line in s.daemon.log().splitlines()]  # --log-format json
        assert any(e["level"] == "warning" and e["message"].startswith("DRY RUN") for e in daemon_log)
        status = run_policyd("status", "--address", s.daemon.admin_address).stdout
        assert "mode:       DRY RUN" in status
    finally:
        s.close()


def test_alert_rules_name_only_metrics_the_daemon_exports(stack):
    import re

    import yaml

    from harness import ROOT

    rules = yaml.safe_load((ROOT / "examples" / "prometheus" / "policyd-alerts.yml").read_text())
    exprs = [r["expr"] for group in rules["groups"] for r in group["rules"]]
    assert len(exprs) >= 8 and all(r.get("annotations", {}).get("summary")
                                   for g in rules["groups"] for r in g["rules"])
    wait_for(lambda: value(scrape(stack.metrics_port), "policyd_shims_connected") == 1, 10, "shim report")
    exported = {name for name, _ in scrape(stack.metrics_port)}
    used = {m for e in exprs for m in re.findall(r"\bpolicyd_[a-z_]+", e)}
    assert used and used <= exported, used - exported


def test_check_dry_run_reports_would_deny_and_exits_zero():
    from harness import ROOT

    args = ["check", "--rules", str(ROOT / "examples" / "rules.yaml"), "--username", "Device999",
            "--topic", "/device/Device123/t", "--access", "write"]
    plain = run_policyd(*args, check=False)
    dry = run_policyd(*args, "--dry-run", check=False)
    assert (plain.returncode, plain.stdout.split()[0]) == (1, "deny")
    assert (dry.returncode, dry.stdout.split()[0]) == (0, "would-deny")
    allowed = run_policyd(*args[:4], "Device999", "--topic", "/device/Device999/t", "--access", "write", "--dry-run")
    assert allowed.stdout.split()[0] == "allow"
