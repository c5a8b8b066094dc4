"""`policyd serve`."""

from __future__ import annotations

import argparse
import sys

from .common import DEFAULT_LISTEN, octal_mode


def add_subparser(sub) -> None:
    p = sub.add_parser("serve", help="run the daemon the Mosquitto plugin asks")
    p.add_argument("--rules", help="rules YAML file (this or --source)")
    p.add_argument("--source", metavar="etcd://HOST:PORT[,HOST:PORT]/PREFIX",
                   help="follow the fleet's policy in etcd instead of a file (docs/operations.md)")
    for flag, what in (("--etcd-ca", "TLS to etcd: the CA of its members' certificates"),
                       ("--etcd-cert", "TLS client certificate for etcd"), ("--etcd-key", "its key"),
                       ("--etcd-user", "etcd user"),
                       ("--etcd-password-file", "file holding that user's password")):
        p.add_argument(flag, metavar="PEM" if flag.endswith(("ca", "cert", "key")) else None, help=what)
    p.add_argument("--listen", default=DEFAULT_LISTEN,
                   help=f"gRPC address for the broker: unix:/path.sock or 127.0.0.1:PORT (default {DEFAULT_LISTEN})")
    p.add_argument("--admin-listen", help="address of the admin service (reload, status, check --address); "
                   "default: a 0600 unix socket next to a unix --listen, named NAME-admin.sock; with a TCP "
                   "--listen, DIR/policyd-admin.sock with --state-dir DIR, else "
                   "/run/policyd/policyd-PORT-admin.sock")
    p.add_argument("--socket-mode", type=octal_mode, default=0o660,
                   help="mode of the --listen unix socket (default 0660)")
    p.add_argument("--socket-group", help="group of the --listen unix socket, e.g. mosquitto")
    p.add_argument("--state-dir", metavar="DIR",
                   help="keep the policy in force and recent reloads here, so that a restart resumes "
                        "from it when the rules file is rejected, and brokers learn whom the restart's "
                        "changes disconnect (e.g. /var/lib/policyd)")
    p.add_argument("--cache-ttl-ms", type=int, default=5000, help="how long the plugin may cache an answer")
    p.add_argument("--workers", type=int, default=8, help="gRPC worker threads")
    p.add_argument("--watch", action=argparse.BooleanOptionalAction, default=True,
                   help="reload when the rules file changes on disk (default on); SIGHUP and "
                   "`policyd reload` work either way")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="least severe level logged (default info; debug also logs each denial)")
    p.add_argument("--log-format", default="text", choices=["text", "json"],
                   help="daemon log lines on stderr: text, or one JSON object per line")
    p.add_argument("--metrics-listen", metavar="[HOST:]PORT",
                   help="serve Prometheus /metrics, /healthz and /readyz over HTTP here "
                   "(host defaults to 127.0.0.1; off when not given)")
    p.add_argument("--dry-run", action="store_true",
                   help="answer allow to every check; count and log what the policy would deny "
                   "(roll out a new policy safely)")
    p.add_argument("--decision-log", metavar="PATH|-",
                   help="write one JSON line per decision to PATH (reopened after logrotate) or - (stdout)")
    p.add_argument("--decision-log-filter", choices=["all", "deny"], default="all",
                   help="log every decision, or only denials and errors (default all)")
    p.add_argument("--decision-log-sample", type=int, default=1, metavar="N",
                   help="log 1 in N allows; denials and errors are always logged (default 1)")
    for flag, what in (("--tls-ca", "CA that signs the brokers' link certificates"),
                       ("--tls-cert", "this daemon's certificate (policyd certs server)"),
                       ("--tls-key", "its key")):
        p.add_argument(flag, metavar="PEM", help=f"mutual TLS on TCP listeners: {what}; "
                       "give all three (docs/identity.md)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from ..server.link_tls import LinkTls
    from ..server.logs import DecisionLogOptions, configure_logging
    from ..server.serve import ServeOptions, serve

    configure_logging(args.log_level, args.log_format)
    if bool(args.rules) == bool(args.source):
        print("policyd serve: give --rules FILE or --source etcd://..., one of them", file=sys.stderr)
        return 2
    fleet = None
    if args.source:
        from ..fleet.etcd import EtcdSource
        from ..server.serve import FleetOptions
        from .fleet_cmds import etcd_credentials

        try:
            EtcdSource.parse(args.source)
            fleet = FleetOptions(args.source, etcd_credentials(args))
        except (ValueError, OSError) as exc:
            print(f"policyd serve: {exc}", file=sys.stderr)
            return 2
    if args.decision_log_sample < 1:
        print("policyd serve: --decision-log-sample must be at least 1", file=sys.stderr)
        return 2
    tls_files = (args.tls_ca, args.tls_cert, args.tls_key)
    if any(tls_files) and not all(tls_files):
        print("policyd serve: --tls-ca, --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    decision_log = None
    if args.decision_log:
        decision_log = DecisionLogOptions(args.decision_log, only_denials=args.decision_log_filter == "deny",
                                          sample_allows=args.decision_log_sample)
    return serve(ServeOptions(
        rules=args.rules or "", fleet=fleet, listen=args.listen, admin_listen=args.admin_listen,
        socket_mode=args.socket_mode, socket_group=args.socket_group,
        cache_ttl_ms=args.cache_ttl_ms, workers=args.workers,
        metrics_listen=args.metrics_listen, dry_run=args.dry_run, decision_log=decision_log,
        watch_rules=args.watch, tls=LinkTls(*tls_files) if all(tls_files) else None,
        state_dir=args.state_dir))
