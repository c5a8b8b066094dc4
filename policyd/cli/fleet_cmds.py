"""The policy in etcd (docs/operations.md, "Fleet layout"): `policyd push`, `policyd device`,
`policyd history`, `policyd rollback`, and the etcd options `policyd serve --source` shares."""

from __future__ import annotations

import argparse
import datetime
import os
import sys

from .common import print_problems

SOURCE_ENV = "POLICYD_SOURCE"


def add_etcd_options(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--source", default=os.environ.get(SOURCE_ENV), required=required and not os.environ.get(SOURCE_ENV),
                   metavar="etcd://HOST:PORT[,HOST:PORT]/PREFIX",
                   help=f"the etcd cluster and key prefix of the fleet's policy (default ${SOURCE_ENV})")
    p.add_argument("--etcd-ca", metavar="PEM", help="TLS to etcd: the CA that signs its members' certificates")
    p.add_argument("--etcd-cert", metavar="PEM", help="TLS client certificate for etcd (with --etcd-key)")
    p.add_argument("--etcd-key", metavar="PEM", help="its key")
    p.add_argument("--etcd-user", help="etcd user (with --etcd-password-file)")
    p.add_argument("--etcd-password-file", metavar="PATH",
                   help="file holding that user's password (never on the command line)")


def etcd_credentials(args: argparse.Namespace):
    from ..fleet.etcd import EtcdCredentials

    if bool(args.etcd_user) != bool(args.etcd_password_file):
        raise ValueError("--etcd-user and --etcd-password-file go together")
    password = None
    if args.etcd_password_file:
        with open(args.etcd_password_file, encoding="utf-8") as fh:
            password = fh.read().rstrip("\n")
    return EtcdCredentials(args.etcd_ca, args.etcd_cert, args.etcd_key, args.etcd_user, password)


def add_subparsers(sub) -> None:
    p = sub.add_parser("push", help="validate a rules file, then publish it to the fleet in etcd")
    p.add_argument("file", help="rules YAML file")
    p.add_argument("--expect-revision", type=int, metavar="REV",
                   help="the revision this file replaces (policyd history); refused if it moved on")
    add_etcd_options(p, True)
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("device", help="add, change or revoke one device in the fleet's policy")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("set", help="give a device these rules (in place of the pushed file's)")
    a.add_argument("name", help="the device's identity (certificate CN / username)")
    a.add_argument("rules", nargs="+", metavar="TOPIC:ACCESS", help="e.g. /device/%%u/#:readwrite")
    add_etcd_options(a, True)
    a = actions.add_parser("revoke", help="deny a device everything and disconnect it everywhere")
    a.add_argument("name", help="the device's identity")
    a.add_argument("--reason", default="revoked", help="recorded with the entry")
    add_etcd_options(a, True)
    a = actions.add_parser("reset", help="drop a device's entry: the pushed file's rules apply again")
    a.add_argument("name", help="the device's identity")
    add_etcd_options(a, True)
    a = actions.add_parser("list", help="device entries on top of the pushed file")
    add_etcd_options(a, True)
    p.set_defaults(func=cmd_device)

    p = sub.add_parser("history", help="the fleet policy's last changes, newest first")
    p.add_argument("--limit", type=int, default=20, help="how many changes (default 20)")
    add_etcd_options(p, True)
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("rollback", help="publish the fleet policy as it was at a revision")
    p.add_argument("--to", type=int, required=True, metavar="REV", dest="to_revision",
                   help="the revision whose policy to publish again (policyd history)")
    p.add_argument("--expect-revision", type=int, metavar="REV", help="refuse if the policy moved past REV")
    p.add_argument("--max-txn-ops", type=int, default=128, metavar="N",
                   help="etcd's --max-txn-ops (default 128, etcd's default): a rollback is one transaction, "
                        "refused when it would need more operations")
    add_etcd_options(p, True)
    p.set_defaults(func=cmd_rollback)


def _fleet(args: argparse.Namespace):
    from ..fleet.etcd import Etcd, EtcdSource
    from ..fleet.publish import Fleet

    return Fleet(Etcd(EtcdSource.parse(args.source), etcd_credentials(args)))


def _run(name: str, args: argparse.Namespace, work) -> int:
    from ..engine import PolicyLoadError
    from ..fleet.etcd import EtcdError
    from ..fleet.publish import Conflict

    try:
        fleet = _fleet(args)
    except (ValueError, OSError) as exc:
        print(f"policyd {name}: {exc}", file=sys.stderr)
        return 2
    try:
        return work(fleet)
    except PolicyLoadError as exc:
        print_problems(exc.problems)
        print(f"policyd {name}: nothing published: the policy does not validate", file=sys.stderr)
        return 1
    except Conflict as exc:
        print(f"policyd {name}: nothing published: {exc}", file=sys.stderr)
        return 1
    except (EtcdError, OSError) as exc:
        print(f"policyd {name}: nothing published: {exc}", file=sys.stderr)
        return 2
    finally:
        fleet.etcd.close()


def cmd_push(args: argparse.Namespace) -> int:
    from ..engine import read_rules_bytes

    def work(fleet) -> int:
        data = read_rules_bytes(args.file)
        revision = fleet.push(data, args.file, args.expect_revision)
        print(f"published {args.file} as revision {revision}")
        return 0
    return _run("push", args, work)


def cmd_device(args: argparse.Namespace) -> int:
    def work(fleet) -> int:
        if args.action == "list":
            for name, value in sorted(fleet.devices().items()):
                print(f"{name}\t{value.decode()}")
            return 0
        if args.action == "set":
            rules = []
            for text in args.rules:
                topic, sep, access = text.rpartition(":")
                if not sep or not topic:
                    print(f"policyd device set: {text!r} is not TOPIC:ACCESS", file=sys.stderr)
                    return 2
                rules.append((topic, access))
            revision = fleet.device_set(args.name, rules)
        elif args.action == "revoke":
            revision = fleet.device_revoke(args.name, args.reason)
        else:
            revision = fleet.device_reset(args.name)
        print(f"device {args.action} {args.name}: revision {revision}")
        return 0
    return _run(f"device {args.action}", args, work)


def cmd_history(args: argparse.Namespace) -> int:
    def work(fleet) -> int:
        for change in fleet.history(args.limit):
            at = datetime.datetime.fromtimestamp(change.at, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
            print(f"{change.revision}\t{at}\t{change.by}\t{change.action} {change.subject}")
        return 0
    return _run("history", args, work)


def cmd_rollback(args: argparse.Namespace) -> int:
    def work(fleet) -> int:
        revision = fleet.rollback(args.to_revision, args.expect_revision, args.max_txn_ops)
        print(f"rolled back to the policy of revision {args.to_revision}: now revision {revision}")
        return 0
    return _run("rollback", args, work)
