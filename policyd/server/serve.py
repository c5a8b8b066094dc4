"""`policyd serve`: load the policy, listen, answer, reload on SIGHUP."""

from __future__ import annotations

import grp
import logging
import os
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from typing import Optional

import grpc

from ..engine import PolicyLoadError
from ..fleet import FleetUnavailable
from ..v1 import policy_pb2_grpc as pb_grpc
from . import listen, sd_notify
from .link_tls import LinkTls
from .logs import DecisionLog, DecisionLogOptions
from .readiness import SocketProbe, broker_access_problem
from .service import AdminService, PolicyService
from .generations import ClockGenerations
from .state import StateDir
from .store import PolicyStore
from .watch_stream import MAX_STREAMS as MAX_WATCH_STREAMS
from .watcher import RulesFileWatcher

log = logging.getLogger("policyd.serve")


# The plugin pings every auth_opt_policyd_keepalive_s (at least 1 s) even with no call in flight,
# so a dropped link fails its Watch stream; accept that (the defaults would answer GOAWAY
# "too_many_pings"). The daemon pings too, so it drops the streams of brokers that vanished.
KEEPALIVE_OPTIONS = (
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 500),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_time_ms", 30000),
    ("grpc.keepalive_timeout_ms", 10000),
)


@dataclass
class ServeOptions:
    rules: str
    listen: str
    admin_listen: Optional[str] = None  # None: next to a unix listen socket
    socket_mode: int = 0o660
    socket_group: Optional[str] = None
    cache_ttl_ms: int = 5000
    workers: int = 8
    allow_remote_plaintext: bool = False
    metrics_listen: Optional[str] = None  # HOST:PORT of /metrics, /healthz, /readyz; None: off
    dry_run: bool = False  # answer allow; count and log what the policy would deny
    decision_log: Optional[DecisionLogOptions] = None
    watch_rules: bool = True  # reload when the rules file changes on disk
    tls: Optional[LinkTls] = None  # mutual TLS on TCP listeners (link_tls.py)
    state_dir: Optional[str] = None  # what survives a restart (state.py); None: nothing does
    fleet: Optional["FleetOptions"] = None  # the policy follows etcd instead of `rules` (policyd.fleet)


@dataclass
class FleetOptions:
    source: str                      # etcd://HOST:PORT[,HOST:PORT]/PREFIX
    credentials: object = None       # policyd.fleet.etcd.EtcdCredentials


# Limits of the wire contract and of sense: every option is checked before anything starts.
MAX_CACHE_TTL_MS = 24 * 3600 * 1000  # a day; CheckAclResponse.cache_ttl_ms is a uint32
MAX_WORKERS = 1024


def option_problems(opts: ServeOptions) -> list[str]:
    """What is wrong with the options, each as one line naming the option."""
    problems = []
    if not 0 <= opts.cache_ttl_ms <= MAX_CACHE_TTL_MS:
        problems.append(f"--cache-ttl-ms {opts.cache_ttl_ms}: must be 0 (no caching) to {MAX_CACHE_TTL_MS}")
    if not 1 <= opts.workers <= MAX_WORKERS:
        problems.append(f"--workers {opts.workers}: must be 1 to {MAX_WORKERS}")
    if not 0 <= opts.socket_mode <= 0o777:
        problems.append(f"--socket-mode {opts.socket_mode:o}: must be a permission mode such as 0660")
    elif opts.socket_mode & 0o002:
        problems.append(f"--socket-mode {opts.socket_mode:04o}: any local user could ask for decisions "
                        "and read them; use --socket-group with 0660")
    elif not opts.socket_mode & 0o200:
        problems.append(f"--socket-mode {opts.socket_mode:04o}: nobody, not even the owner, could connect")
    if opts.socket_group is not None:
        try:
            grp.getgrnam(opts.socket_group)
        except KeyError:
            problems.append(f"--socket-group {opts.socket_group!r}: no such group")
    for flag, address in (("--listen", opts.listen), ("--admin-listen", opts.admin_listen)):
        if address is not None:
            try:
                listen.parse(address)
            except listen.ListenError as exc:
                problems.append(f"{flag}: {exc}")
    if opts.fleet is None and not os.path.isfile(opts.rules):
        problems.append(f"--rules {opts.rules}: no such file")
    if opts.state_dir and os.path.exists(opts.state_dir) and not os.path.isdir(opts.state_dir):
        problems.append(f"--state-dir {opts.state_dir}: exists and is not a directory")
    if opts.decision_log is not None and opts.decision_log.sample_allows < 1:
        problems.append("--decision-log-sample: must be at least 1")
    return problems


class Daemon:
    """The running daemon: a policy store and two gRPC servers.

    The broker-facing server carries only the Policy service. Admin (Reload,
    Status) lives on its own listener, by default a 0600 unix socket, so that
    whoever can reach the broker's socket cannot reload policy.
    """

    def __init__(self, opts: ServeOptions):
        self.opts = opts
        self.fleet = None  # policyd.fleet.source.FleetSource, when the policy follows etcd
        if opts.fleet is not None:  # generations are etcd revisions (policyd.fleet)
            self.store = PolicyStore(opts.fleet.source)
            self.store.follows = opts.fleet.source
        else:
            self.store = PolicyStore(opts.rules, StateDir(opts.state_dir, opts.rules) if opts.state_dir else None,
                                     _generations(opts))
        self.policy_service = PolicyService(self.store, opts.cache_ttl_ms)
        self._servers: list[grpc.Server] = []
        self._unix_paths: list[str] = []
        self._stop = threading.Event()
        self._reload_requested = threading.Event()
        self._serving = False
        self.metrics_server = None
        self.policy_service.dry_run = opts.dry_run
        self.watcher: Optional[RulesFileWatcher] = None
        self.probe: Optional[SocketProbe] = None

    def start(self) -> None:
        if self.opts.fleet is not None:
            self._start_fleet()
        else:
            self._start_file()
        endpoint = listen.parse(self.opts.listen)
        admin = (listen.parse(self.opts.admin_listen) if self.opts.admin_listen
                 else listen.admin_default(endpoint, self.opts.state_dir))
        # Each Watch stream holds a thread: room for them on top of the checks' workers.
        policy_server = self._server(workers=self.opts.workers + MAX_WATCH_STREAMS)
        pb_grpc.add_PolicyServicer_to_server(self.policy_service, policy_server)
        self._bind(policy_server, endpoint, self.opts.socket_mode, self.opts.socket_group)
        if admin is not None:
            admin_server = self._server(workers=2)
            admin_service = AdminService(self.store)
            admin_service.shims, admin_service.dry_run = self._shims, self.opts.dry_run
            pb_grpc.add_AdminServicer_to_server(admin_service, admin_server)
            self._bind(admin_server, admin, 0o600, None)
        self._start_operations()
        for server in self._servers:
            server.start()
        self.probe = SocketProbe(endpoint, self._answer_in_process, tls=self.opts.tls is not None
                                 and not endpoint.is_unix)
        problem = self.probe.problem()
        if problem is not None:
            raise listen.ListenError(f"{problem}; brokers would be denied everything")
        self._serving = True
        if self.watcher is not None:
            self.watcher.start()
        if self.opts.dry_run:
            log.warning("DRY RUN: every check is answered allow; denials are only counted and logged")
        log.info("policyd listening on %s (admin: %s)", endpoint.target,
                 admin.target if admin else "none; reload with SIGHUP")

    def _start_file(self) -> None:
        if self.opts.watch_rules:  # looks at the file before the first load: no edit is missed
            self.watcher = RulesFileWatcher(self.store)
        outcome = self.store.start()
        if not self.store.has_policy:
            raise PolicyLoadError(list(outcome.problems))
        if not outcome.ok:
            log.warning("serving the policy in force before the restart (generation %d) until %s "
                        "loads", outcome.generation, self.opts.rules)

    def _start_fleet(self) -> None:
        from ..fleet.etcd import Etcd, EtcdCredentials, EtcdSource
        from ..fleet.source import FleetSource

        etcd = Etcd(EtcdSource.parse(self.opts.fleet.source), self.opts.fleet.credentials or EtcdCredentials())
        self.fleet = FleetSource(self.store, etcd, self.opts.state_dir)
        self.store.source_detail = self.fleet.describe
        self.fleet.start()  # raises FleetUnavailable when neither etcd nor a saved state has a policy

    def _start_operations(self) -> None:
        """The decision log and the metrics endpoint (issue 7), when asked for."""
        if self.opts.decision_log is not None:
            self.policy_service.decision_log = DecisionLog(self.opts.decision_log)
        if self.opts.metrics_listen is None:
            return
        from .metrics import Metrics, MetricsServer  # prometheus_client only when metrics are on

        metrics = Metrics(self.store, self.policy_service.counters, shims=self._shims,
                          decision_log=self.policy_service.decision_log, dry_run=self.opts.dry_run,
                          fleet=self.fleet)
        self.policy_service.latency = metrics.latency
        try:
            self.metrics_server = MetricsServer(self.opts.metrics_listen, metrics, self.ready).start()
        except ValueError as exc:
            raise listen.ListenError(str(exc)) from None

    def _shims(self):
        """What the shims last reported (the ShimRegistry fed by ReportStats)."""
        return self.policy_service.shims.snapshot()

    def ready(self) -> bool:
        """A policy is in force and a check over the listen socket is answered."""
        return (self._serving and self.store.status().generation > 0 and self.probe is not None
                and self.probe.problem() is None)

    def _answer_in_process(self, request):
        return self.policy_service.CheckAcl(request, None)

    def _server(self, workers: Optional[int] = None) -> grpc.Server:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers or self.opts.workers),
                             options=[("grpc.so_reuseport", 0), *KEEPALIVE_OPTIONS])
        self._servers.append(server)
        return server

    def _bind(self, server: grpc.Server, endpoint: listen.Endpoint, mode: int, group: Optional[str]) -> None:
        if endpoint.is_unix:
            listen.prepare_unix_path(endpoint.unix_path)
            old_umask = os.umask(0o177)  # the socket is born private, then opened up
            try:
                bound = server.add_insecure_port(endpoint.target)
            finally:
                os.umask(old_umask)
            if not bound:
                raise listen.ListenError(f"cannot listen on {endpoint.target}")
            self._unix_paths.append(endpoint.unix_path)
            listen.secure_unix_socket(endpoint.unix_path, mode, group)
            if server is self._servers[0]:  # the broker's socket (the admin one is private)
                self._check_broker_access(endpoint.unix_path)
            return
        if self.opts.tls is not None:  # mutual TLS: any address, only clients of the link CA
            if not server.add_secure_port(endpoint.target, self.opts.tls.server_credentials()):
                raise listen.ListenError(f"cannot listen on {endpoint.target}")
            return
        if not listen.is_loopback(endpoint.host) and not self.opts.allow_remote_plaintext:
            raise listen.ListenError(
                f"refusing plaintext gRPC on non-loopback address {endpoint.target}: "
                "use a unix socket or a loopback address")
        if not server.add_insecure_port(endpoint.target):
            raise listen.ListenError(f"cannot listen on {endpoint.target}")

    def _check_broker_access(self, path: str) -> None:
        """Refuse to start when the broker's user could not open the socket and we know who
        that is: as root (the broker, started as root, drops to `mosquitto`) or with
        --socket-group. Otherwise the broker may well run as this daemon's user: say it loudly."""
        problem = broker_access_problem(path, self.opts.socket_group)
        if problem is None:
            return
        if os.geteuid() == 0 or self.opts.socket_group is not None:
            raise listen.ListenError(problem)
        log.warning("%s (fine if the broker runs as this daemon's user)", problem)

    def request_reload(self) -> None:
        """Safe to call from a signal handler: the reload runs on the main loop."""
        self._reload_requested.set()

    def request_stop(self) -> None:
        self._stop.set()
        self._reload_requested.set()

    def run_until_stopped(self) -> None:
        while not self._stop.is_set():
            self._reload_requested.wait()
            self._reload_requested.clear()
            if self._stop.is_set():
                break
            if self.fleet is not None:
                log.warning("SIGHUP ignored: the policy follows %s (policyd push / policyd device)",
                            self.opts.fleet.source)
            else:
                self.store.reload("SIGHUP")
        self.stop()

    def stop(self) -> None:
        sd_notify.notify("STOPPING=1")
        self._serving = False
        if self.watcher is not None:
            self.watcher.stop()
        if self.fleet is not None:
            self.fleet.stop()
        for server in self._servers:
            server.stop(grace=1.0).wait()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        if self.probe is not None:
            self.probe.close()
        if self.policy_service.decision_log is not None:
            self.policy_service.decision_log.close()
        for path in self._unix_paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def _generations(opts: ServeOptions) -> ClockGenerations:
    """Generations recorded in the state directory, else next to the broker socket (a
    directory the daemon writes anyway), so that a restart never goes back (generations.py)."""
    if opts.state_dir:
        return ClockGenerations(os.path.join(opts.state_dir, "generation"), directory_mode=0o700)
    endpoint = listen.parse(opts.listen)
    if endpoint.is_unix:
        return ClockGenerations(endpoint.unix_path + ".generation", directory_mode=0o755)
    log.warning("no --state-dir: generations after a restart are ordered by the wall clock only "
                "(a clock set back would reuse older numbers)")
    return ClockGenerations()


def serve(opts: ServeOptions) -> int:
    problems = option_problems(opts)
    if problems:
        for problem in problems:
            log.error("not starting: %s", problem)
        return 2
    daemon = Daemon(opts)
    # Before the first load: a SIGHUP while a large file loads must queue a reload, not end
    # the process (the default action), and SIGTERM must stop it once it has started.
    signal.signal(signal.SIGHUP, lambda *_: daemon.request_reload())
    signal.signal(signal.SIGTERM, lambda *_: daemon.request_stop())
    signal.signal(signal.SIGINT, lambda *_: daemon.request_stop())
    log.info("policyd starting: loading %s", opts.fleet.source if opts.fleet else opts.rules)
    try:
        daemon.start()
    except FleetUnavailable as exc:
        log.error("not starting: %s", exc)
        daemon.stop()
        return 2
    except PolicyLoadError as exc:
        for problem in exc.problems:
            log.error("%s", problem)
        log.error("not starting: %s has errors", opts.rules)
        daemon.stop()
        return 2
    except (listen.ListenError, OSError) as exc:
        log.error("not starting: %s", exc)
        daemon.stop()
        return 2
    sd_notify.notify("READY=1", f"STATUS=serving generation {daemon.store.status().generation}")
    daemon.run_until_stopped()
    log.info("policyd stopped")
    return 0
