"""The fleet's keys in etcd, what each holds, and how a policy is built from them.

    <prefix>/policy/head            who changed what last; written by EVERY change, so its
                                    mod_revision is the policy's revision
    <prefix>/policy/epoch           written once, by the first push: generation = epoch + revision
    <prefix>/policy/base            which pushed rules file is in force: {"sha256", "chunks", "size"}
    <prefix>/policy/devices/<name>  one device's change since that push: its own rules, or revoked
    <prefix>/blobs/<sha256>/<n>     the pushed rules file, in chunks under etcd's request limit

Daemons watch `<prefix>/policy/` only. A push writes its chunks first (nothing points at
them yet, so nobody sees them), then one transaction, guarded by the head's revision,
points `base` at them, drops the device changes and writes the head: every daemon
sees the old policy or the new one, never half of it. A device change is one
transaction of two small keys (its entry and the head). No I/O here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Mapping, Optional

import yaml

from ..engine import CompiledPolicy, PolicyLoadError, Problem, compile_policy, parse_text
from ..engine.model import SourceRef, identity_problem

CHUNK_BYTES = 1024 * 1024  # etcd refuses requests over 1.5 MiB by default


@dataclass(frozen=True)
class Keys:
    prefix: str

    def _k(self, tail: str) -> bytes:
        return f"{self.prefix}/{tail}".encode()

    @property
    def policy(self) -> bytes:
        return self._k("policy/")

    @property
    def head(self) -> bytes:
        return self._k("policy/head")

    @property
    def epoch(self) -> bytes:
        return self._k("policy/epoch")

    @property
    def base(self) -> bytes:
        return self._k("policy/base")

    @property
    def devices(self) -> bytes:
        return self._k("policy/devices/")

    def device(self, name: str) -> bytes:
        return self.devices + name.encode()

    def blob(self, sha256: str) -> bytes:
        return self._k(f"blobs/{sha256}/")

    def chunk(self, sha256: str, index: int) -> bytes:
        return self.blob(sha256) + b"%06d" % index

    def device_name(self, key: bytes) -> Optional[str]:
        return key[len(self.devices):].decode() if key.startswith(self.devices) else None


# The generation brokers see is EPOCH + revision, the epoch being the first push's time in
# seconds times 10**6: every daemon at one revision announces one generation, the revision is
# its last six digits, and it stays above a file source's generations (the clock in ms) and
# above those of an etcd cluster rebuilt earlier (revisions start again at 1), so a shim,
# whose generation only ever rises, keeps caching. Below 2**53: exact in metrics too.
EPOCH_SCALE = 1_000_000


def epoch_value(now: float) -> bytes:
    return b"%d" % (int(now) * EPOCH_SCALE)


def read_epoch(value: bytes | None) -> int:
    try:
        return max(0, int(value)) if value else 0
    except ValueError:
        return 0


# -- values -------------------------------------------------------------------------------

def head_value(action: str, subject: str, by: str, sha256: str) -> bytes:
    return json.dumps({"action": action, "subject": subject, "by": by, "at": round(time.time(), 3),
                       "base": sha256}, sort_keys=True).encode()


def base_value(sha256: str, chunks: int, size: int) -> bytes:
    return json.dumps({"sha256": sha256, "chunks": chunks, "size": size}, sort_keys=True).encode()


@dataclass(frozen=True)
class BasePointer:
    sha256: str
    chunks: int
    size: int

    @classmethod
    def decode(cls, value: bytes) -> "BasePointer":
        try:
            data = json.loads(value)
            pointer = cls(str(data["sha256"]), int(data["chunks"]), int(data["size"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise PolicyLoadError([Problem(_ref("policy/base"), f"not a base pointer: {exc}")])
        if len(pointer.sha256) != 64 or not 0 < pointer.chunks < 100_000:
            raise PolicyLoadError([Problem(_ref("policy/base"), "not a base pointer")])
        return pointer


def device_value(rules: list[tuple[str, str]] | None = None, revoked: Optional[str] = None) -> bytes:
    """One device's entry: its own rules (replacing the pushed file's), or revoked."""
    if revoked is not None:
        return json.dumps({"revoked": revoked}, sort_keys=True).encode()
    return json.dumps({"rules": [[t, a] for t, a in rules or ()]}, sort_keys=True).encode()


# A revoked device is denied everything (deny wins over any allow, its own, its groups',
# certificate entries' or patterns') and loses superuser status; losing access kicks it.
REVOKED_RULES = [("#", "deny")]


@dataclass(frozen=True)
class DeviceEntry:
    rules: tuple            # RuleSpecs, validated like the same rules in a rules file
    text: str               # what the kick diff compares: equal text, equal rules
    revoked: Optional[str]  # why, when revoked


def read_device(name: str, value: bytes, where: str) -> DeviceEntry:
    """Validate one device entry; raises PolicyLoadError naming `where` (the etcd key)."""
    problem = identity_problem(name)
    if problem is not None:
        raise PolicyLoadError([Problem(_ref(where), f"device name {name!r}: {problem}")])
    try:
        data = json.loads(value)
        revoked = data.get("revoked")
        pairs = REVOKED_RULES if revoked is not None else [(str(t), str(a)) for t, a in data["rules"]]
        if revoked is not None and not isinstance(revoked, str):
            raise TypeError("revoked must be a text")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PolicyLoadError([Problem(_ref(where), f"not a device entry: {exc}")]) from None
    document = yaml.safe_dump({"users": {name: [{"topic": t, "access": a} for t, a in pairs]}},
                              allow_unicode=True).encode()
    spec = parse_text(document, where)
    return DeviceEntry(spec.users.get(name, ()), value.decode(), revoked)


def build_policy(base: bytes, devices: Mapping[str, DeviceEntry], where: str) -> tuple[CompiledPolicy, "BaseUsers"]:
    """The policy of a pushed file plus the device entries, and what the file itself says
    of each identity (what a device falls back to when its entry is removed)."""
    spec = parse_text(base, where, interruptible=True)
    base_users = BaseUsers(dict(spec.users), dict(spec.user_sources), frozenset(spec.superusers))
    policy = compile_policy(spec)
    return overlay(policy, base_users, devices, ()), base_users


@dataclass(frozen=True)
class BaseUsers:
    """The pushed file's own entries (copies: retiring a policy empties its tables)."""

    rules: dict
    sources: dict
    superusers: frozenset


def overlay(policy: CompiledPolicy, base: BaseUsers, entries: Mapping[str, DeviceEntry],
            removed) -> CompiledPolicy:
    """`policy` with these device entries applied and the `removed` names back to what
    the pushed file says of them. Always a copy (see CompiledPolicy.with_users)."""
    rules = {name: e.rules for name, e in entries.items()}
    sources = {name: e.text for name, e in entries.items()}
    for name in removed:
        rules[name], sources[name] = base.rules.get(name), base.sources.get(name)
    revoked = {name for name, e in entries.items() if e.revoked is not None}
    restored = {name for name in rules if name not in revoked and name in base.superusers}
    return policy.with_users(rules, sources, (policy.superusers | restored) - revoked,
                             (policy.revoked_identities - rules.keys()) | revoked)


def _ref(key: str) -> SourceRef:
    return SourceRef(f"etcd:{key}", 0, 0, "")
