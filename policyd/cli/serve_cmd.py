"""`policyd serve`."""

from __future__ import annotations

import argparse
import logging

from .common import DEFAULT_LISTEN, octal_mode


def add_subparser(sub) -> None:
    p = sub.add_parser("serve", help="run the daemon the Mosquitto plugin asks")
    p.add_argument("--rules", required=True, help="rules YAML file")
    p.add_argument("--listen", default=DEFAULT_LISTEN,
                   help=f"gRPC address for the broker: unix:/path.sock or 127.0.0.1:PORT (default {DEFAULT_LISTEN})")
    p.add_argument("--admin-listen", help="address of the admin service (Reload, Status); default: "
                   "a 0600 unix socket next to --listen, named NAME-admin.sock")
    p.add_argument("--socket-mode", type=octal_mode, default=0o660,
                   help="mode of the --listen unix socket (default 0660)")
    p.add_argument("--socket-group", help="group of the --listen unix socket, e.g. mosquitto")
    p.add_argument("--cache-ttl-ms", type=int, default=5000, help="how long the plugin may cache an answer")
    p.add_argument("--workers", type=int, default=8, help="gRPC worker threads")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from ..server.serve import ServeOptions, serve

    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return serve(ServeOptions(
        rules=args.rules, listen=args.listen, admin_listen=args.admin_listen,
        socket_mode=args.socket_mode, socket_group=args.socket_group,
        cache_ttl_ms=args.cache_ttl_ms, workers=args.workers))
