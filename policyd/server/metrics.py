"""Prometheus metrics, /healthz and /readyz on `policyd serve --metrics-listen`.

The hot path pays for one histogram observation per check and nothing else:
decision counts come from the service's existing `Counters` and everything
else (policy, reloads, shims) is read at scrape time by custom collectors.
Labels are bounded: result and access on decisions, broker id on shim
counters (one per broker, never per client or topic).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Optional

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .. import __version__
from . import listen
from .shims import ROUND_TRIP

log = logging.getLogger("policyd.metrics")

LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
RESULTS = ("allow", "deny")
ACCESSES = ("read", "write", "subscribe", "unsubscribe")
# A shim that has not reported for this long no longer counts as connected:
# two and a half of the plugin's default report intervals (60 s), so one late
# report does not make a broker flap.
SHIM_STALE_AFTER_S = 150.0
SHIM_COUNTERS = ("checks", "allowed", "denied", "errors", "cache_hits", "cache_misses",
                 "stale_served", "breaker_opens")
SHIM_GAUGES = ("cache_entries", "cache_bytes", "breaker_open", "tick_missing")


class Metrics:
    """The daemon's metric registry (its own, so tests can run several daemons)."""

    def __init__(self, store, counters, *, shims: Callable[[], Any] = lambda: None,
                 decision_log=None, dry_run: bool = False, fleet=None):
        self.registry = CollectorRegistry(auto_describe=False)
        self.latency = Histogram(
            "policyd_decision_duration_seconds", "Time CheckAcl spends deciding one request",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(DaemonCollector(store, counters, decision_log, dry_run))
        self.registry.register(ShimCollector(shims))
        if fleet is not None:
            self.registry.register(FleetCollector(fleet))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class DaemonCollector:
    """Decisions, policy and reload state, read from the service and the store."""

    def __init__(self, store, counters, decision_log, dry_run: bool):
        self.store, self.counters, self.decision_log, self.dry_run = store, counters, decision_log, dry_run

    def collect(self) -> Iterable:
        yield from self._decisions(self.counters.snapshot())
        yield from self._policy()
        info = GaugeMetricFamily("policyd_build_info", "Version of the running daemon", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield GaugeMetricFamily("policyd_dry_run", "1 when the daemon answers allow to everything "
                                "(--dry-run)", value=int(self.dry_run))
        if self.decision_log is not None:
            yield CounterMetricFamily("policyd_decision_log_dropped", "Decision log lines dropped "
                                      "because the writer fell behind", value=self.decision_log.dropped)

    @staticmethod
    def _decisions(counts: dict[str, int]) -> Iterable:
        decisions = CounterMetricFamily("policyd_decisions", "CheckAcl answers by result and access",
                                        labels=["result", "access"])
        for result in RESULTS:
            for access in ACCESSES:
                decisions.add_metric([result, access], counts.get(f"{result}.{access}", 0))
        decisions.add_metric(["error", "unknown"], counts.get("error", 0))
        yield decisions
        would_deny = CounterMetricFamily("policyd_dry_run_would_deny", "Requests answered allow in "
                                         "--dry-run that the policy denies", labels=["access"])
        for access in ACCESSES:
            would_deny.add_metric([access], counts.get(f"would_deny.{access}", 0))
        yield would_deny
        # Identity mode (docs/identity.md): Authenticate answers; reasons are fixed words, never client text.
        connects = CounterMetricFamily("policyd_connects", "Authenticate answers at CONNECT by result "
                                       "and refusal reason", labels=["result", "reason"])
        connects.add_metric(["allow", ""], counts.get("auth.allow", 0))
        connects.add_metric(["error", "internal"], counts.get("auth.error", 0))
        for key, count in sorted(counts.items()):
            if key.startswith("auth.deny."):
                connects.add_metric(["deny", key[len("auth.deny."):]], count)
        yield connects
        refused = CounterMetricFamily("policyd_connections_refused", "Checks denied because the connection "
                                      "itself is not acceptable (revoked, mismatched name, unbound client "
                                      "id); the broker disconnects it", labels=["reason"])
        for key, count in sorted(counts.items()):
            if key.startswith("refused."):
                refused.add_metric([key[len("refused."):]], count)
        yield refused

    def _policy(self) -> Iterable:
        st = self.store.status()
        yield GaugeMetricFamily("policyd_policy_generation", "Generation of the policy in force",
                                value=st.generation)
        yield GaugeMetricFamily("policyd_policy_rules", "Rules in the policy in force", value=st.rules)
        yield GaugeMetricFamily("policyd_policy_identities", "Identities named in the policy in force",
                                value=st.identities)
        yield GaugeMetricFamily("policyd_policy_loaded_timestamp_seconds",
                                "Unix time the policy in force was loaded", value=st.loaded_at)
        yield CounterMetricFamily("policyd_reloads", "Successful policy loads (start, SIGHUP, RPC, watch)",
                                  value=getattr(self.store, "reloads_ok", 0))
        yield CounterMetricFamily("policyd_reload_failures", "Rejected reloads (the old policy stayed)",
                                  value=getattr(self.store, "reloads_failed", 0))
        failed = not getattr(self.store, "last_reload_ok", not st.last_problems)
        yield GaugeMetricFamily("policyd_last_reload_failed", "1 when the last reload attempt was rejected",
                                value=int(failed))
        yield GaugeMetricFamily("policyd_last_reload_failure_timestamp_seconds",
                                "Unix time of the last rejected reload (0: none)",
                                value=getattr(self.store, "last_failure_at", 0.0))
        yield GaugeMetricFamily("policyd_reload_duration_seconds", "How long the last successful reload took",
                                value=getattr(self.store, "last_reload_seconds", 0.0))
        yield CounterMetricFamily("policyd_kicked_identities", "Identities whose sessions reloads asked "
                                  "brokers to disconnect", value=getattr(self.store, "kicks_total", 0))
        yield CounterMetricFamily("policyd_watch_replays_incomplete", "Brokers returning from a generation "
                                  "whose missed kicks could not be proven: told to disconnect every client",
                                  value=getattr(self.store, "replays_incomplete", 0))
        yield CounterMetricFamily("policyd_state_save_failures", "Saves of the --state-dir that failed "
                                  "(a restart would resume from an older policy)",
                                  value=getattr(self.store, "state_errors", 0))
        state = getattr(self.store, "state", None)
        yield GaugeMetricFamily("policyd_state_ignored", "1 when the --state-dir state found at start "
                                "could not be used (damaged, or saved for another rules file)",
                                value=int(bool(state is not None and state.ignored)))


class FleetCollector:
    """The etcd source (policyd.fleet), when the policy follows etcd."""

    def __init__(self, fleet):
        self.fleet = fleet

    def collect(self) -> Iterable:
        st = self.fleet.status
        yield GaugeMetricFamily("policyd_etcd_connected", "1 while etcd is reachable; 0: serving the last "
                                "complete revision", value=int(st.connected))
        yield GaugeMetricFamily("policyd_etcd_revision", "etcd revision of the policy in force",
                                value=st.revision)
        yield GaugeMetricFamily("policyd_etcd_device_entries", "Device entries on top of the pushed file",
                                value=st.devices)
        yield CounterMetricFamily("policyd_etcd_disconnects", "Times etcd became unreachable",
                                  value=st.disconnects)
        yield CounterMetricFamily("policyd_etcd_rejected", "Revisions or device entries that did not "
                                  "validate (logged; the device is denied)", value=st.rejected)


class ShimCollector:
    """Each broker's shim counters, as last reported through ReportStats."""

    def __init__(self, shims: Callable[[], Any]):
        self.shims = shims

    def collect(self) -> Iterable:
        rows = shim_rows(self.shims())
        now = time.time()
        connected = sum(1 for _, _, seen, up in rows if is_connected(seen, up, now))
        yield GaugeMetricFamily("policyd_shims_connected", "Brokers whose shim is connected "
                                f"(or reported within {SHIM_STALE_AFTER_S:.0f} s)", value=connected)
        families = {name: CounterMetricFamily(f"policyd_shim_{name}", f"Shim {name.replace('_', ' ')}, "
                                              "as reported by the broker", labels=["broker"])
                    for name in SHIM_COUNTERS}
        families.update({name: GaugeMetricFamily(f"policyd_shim_{name}", f"Shim {name.replace('_', ' ')}, "
                                                 "as reported by the broker", labels=["broker"])
                         for name in SHIM_GAUGES})
        seen_family = GaugeMetricFamily("policyd_shim_last_report_timestamp_seconds",
                                        "Unix time of the broker's last ReportStats", labels=["broker"])
        round_trips = HistogramMetricFamily("policyd_shim_miss_round_trip_seconds", "CheckAcl round trips "
                                            "on the broker's thread (cache misses), as the shim timed them",
                                            labels=["broker"])
        for broker, stats, seen, _ in rows:
            for name, family in families.items():
                family.add_metric([broker], int(stats.get(name, 0) or 0))
            seen_family.add_metric([broker], seen or 0)
            if ROUND_TRIP in stats:
                histogram = stats[ROUND_TRIP]
                round_trips.add_metric([broker], round_trip_buckets(histogram),
                                       sum_value=histogram["sum_us"] / 1e6)
        yield from families.values()
        yield seen_family
        yield round_trips


def round_trip_buckets(histogram: dict) -> list[tuple[str, int]]:
    """The shim's per-bucket counts as Prometheus's cumulative buckets (bounds in seconds)."""
    buckets, total = [], 0
    for bound_us, count in zip(histogram["bounds_us"], histogram["counts"]):
        total += count
        buckets.append((repr(bound_us / 1e6), total))
    buckets.append(("+Inf", total + histogram["counts"][-1]))
    return buckets


def is_connected(seen: Optional[float], up: Optional[bool], now: float) -> bool:
    if up is not None:  # the registry knows (e.g. a Watch stream is open)
        return bool(up)
    return bool(seen) and now - seen < SHIM_STALE_AFTER_S


def shim_rows(snapshot: Any) -> list[tuple[str, dict, float, Optional[bool]]]:
    """(broker id, stats, last seen, connected or None) per broker, from ShimRegistry.snapshot().

    The snapshot maps (broker_id, peer) to {"stats": {...}, "last_seen": t}. A
    broker that reconnected shows up under a new peer; only its newest report
    counts, so each broker is one series (peers are not labels: they churn).
    """
    latest: dict[str, tuple[str, dict, float, Optional[bool]]] = {}
    for key, entry in (snapshot or {}).items():
        broker = str(key[0] if isinstance(key, tuple) else key)
        seen = float(entry.get("last_seen") or 0.0)
        if broker not in latest or seen > latest[broker][2]:
            latest[broker] = (broker, entry.get("stats") or {}, seen, entry.get("connected"))
    return [latest[b] for b in sorted(latest)]


class MetricsServer:
    """A small HTTP server: /metrics, /healthz (alive), /readyz (a check over the socket is answered)."""

    def __init__(self, address: str, metrics: Metrics, ready: Callable[[], bool]):
        self.host, self.port = parse_listen(address)
        handler = _handler_class(metrics, ready)
        server_class = _V6Server if ":" in self.host else ThreadingHTTPServer
        self._httpd = server_class((self.host, self.port), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="policyd-metrics", daemon=True)

    def start(self) -> "MetricsServer":
        self._thread.start()
        where = "" if listen.is_loopback(self.host) else " (not loopback: reachable from the network)"
        log.info("metrics on http://%s:%d/metrics%s", self.host, self.port, where)
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class _V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def parse_listen(text: str) -> tuple[str, int]:
    """`PORT`, `:PORT` or `HOST:PORT` (`[v6]:PORT`); the host defaults to 127.0.0.1."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"--metrics-listen {text!r}: expected HOST:PORT") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"--metrics-listen {text!r}: port out of range")
    return host, number


def _handler_class(metrics: Metrics, ready: Callable[[], bool]):
    class Handler(BaseHTTPRequestHandler):
        server_version = "policyd"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, metrics.render(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._reply(200, b"ok\n")
            elif path == "/readyz":
                ok = ready()
                self._reply(200 if ok else 503, b"ready\n" if ok else b"not ready: no policy in force, or a check over the listen socket is not answered\n")
            else:
                self._reply(404, b"not found: try /metrics, /healthz or /readyz\n")

        def _reply(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args) -> None:  # scrapes every 15 s are not news
            log.debug("%s " + fmt, self.client_address[0], *args)

    return Handler
