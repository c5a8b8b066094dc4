"""The operator side: publish a validated file, change one device, read history, roll back.

Every change is one etcd transaction guarded by the head's revision (compare-and-swap),
and writes the head: nobody overwrites a change they have not seen, and every change
has one revision that every daemon will announce as its generation.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import socket
import time
from dataclasses import dataclass
from typing import Optional

from ..engine import PolicyLoadError, compile_policy, parse_text
from .etcd import Etcd, EtcdError, delete, mod_revision_is, prefix_end, put
from .layout import (CHUNK_BYTES, BasePointer, Keys, base_value, device_value, epoch_value, head_value,
                     read_device)

DEVICE_RETRIES = 5      # device changes are independent: re-read the head and try again
ETCD_MAX_TXN_OPS = 128  # etcd's default --max-txn-ops: the most operations one transaction may hold


class Conflict(Exception):
    """The policy changed since the revision the change was based on."""


@dataclass(frozen=True)
class Change:
    revision: int
    action: str
    subject: str
    by: str
    at: float


def operator() -> str:
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except (KeyError, OSError):
        return f"?@{socket.gethostname()}"


class Fleet:
    def __init__(self, etcd: Etcd):
        self.etcd = etcd
        self.keys = Keys(etcd.source.prefix)

    def head_revision(self) -> int:
        """The revision of the policy in etcd (0: nothing pushed yet)."""
        reply = self.etcd.range(self.keys.head)
        return reply.kvs[0].mod_revision if reply.kvs else 0

    # -- push ----------------------------------------------------------------------------

    def push(self, data: bytes, file: str, expect_revision: Optional[int]) -> int:
        """Validate `data` completely, then publish it in place of the policy at
        `expect_revision` (None only when nothing was pushed yet). Device entries
        are dropped: the file is the whole policy. Returns the new revision."""
        compile_policy(parse_text(data, file))  # raises PolicyLoadError naming file, line, key
        current = self.head_revision()
        if expect_revision is None and current:
            raise Conflict(f"{self.etcd.source.url} holds revision {current}: review it (policyd history) "
                           f"and push with --expect-revision {current}")
        expected = expect_revision or 0
        if expected != current:
            raise Conflict(f"the policy is at revision {current}, not {expected}: someone changed it "
                           "meanwhile (policyd history)")
        sha256 = hashlib.sha256(data).hexdigest()
        chunks = self._write_chunks(sha256, data)
        first = [put(self.keys.epoch, epoch_value(time.time()))] if expected == 0 else []
        revision = self._commit(expected, [*first, put(self.keys.base, base_value(sha256, chunks, len(data))),
                                           delete(self.keys.devices, prefix_end(self.keys.devices))],
                                "push", file, sha256)
        self._drop_other_blobs(sha256)
        return revision

    def _write_chunks(self, sha256: str, data: bytes) -> int:
        """Content-addressed: nothing points at them until the commit, so a push that
        fails half-way leaves nothing any daemon reads."""
        count = max(1, -(-len(data) // CHUNK_BYTES))
        for i in range(count):
            self.etcd.txn([], [put(self.keys.chunk(sha256, i), data[i * CHUNK_BYTES:(i + 1) * CHUNK_BYTES])])
        return count

    def _drop_other_blobs(self, keep: str) -> None:
        """Older files stay readable at their revisions (history, rollback) until etcd compacts."""
        blobs = self.keys.blob("")
        reply = self.etcd.range(blobs, prefix_end(blobs), keys_only=True)
        shas = {kv.key[len(blobs):].split(b"/", 1)[0].decode() for kv in reply.kvs} - {keep}
        for sha in shas:
            blob = self.keys.blob(sha)
            self.etcd.txn([], [delete(blob, prefix_end(blob))])

    def _commit(self, expected: int, ops: list, action: str, subject: str, sha256: str) -> int:
        reply = self.etcd.txn([mod_revision_is(self.keys.head, expected)],
                              ops + [put(self.keys.head, head_value(action, subject, operator(), sha256))])
        if not reply.succeeded:
            raise Conflict(f"the policy changed after revision {expected}: someone else published "
                           "meanwhile (policyd history)")
        return reply.header.revision

    # -- one device ----------------------------------------------------------------------

    def device_set(self, name: str, rules: list[tuple[str, str]]) -> int:
        return self._device(name, device_value(rules), "device set")

    def device_revoke(self, name: str, reason: str) -> int:
        return self._device(name, device_value(revoked=reason), "device revoke")

    def device_reset(self, name: str) -> int:
        return self._device(name, None, "device reset")

    def _device(self, name: str, value: Optional[bytes], action: str) -> int:
        key = self.keys.device(name)
        if value is not None:
            read_device(name, value, key.decode())  # raises PolicyLoadError: never publish what daemons refuse
        for _ in range(DEVICE_RETRIES):
            reply = self.etcd.range(self.keys.head)
            if not reply.kvs:
                raise Conflict(f"nothing pushed under {self.etcd.source.url} yet: policyd push FILE first")
            head = reply.kvs[0]
            sha256 = json.loads(head.value).get("base", "")
            op = put(key, value) if value is not None else delete(key)
            try:
                return self._commit(head.mod_revision, [op], action, name, sha256)
            except Conflict:
                continue  # another change landed first; this one does not depend on it
        raise Conflict(f"the policy kept changing: {action} {name} not applied after {DEVICE_RETRIES} tries")

    def devices(self) -> dict[str, bytes]:
        reply = self.etcd.range_prefix(self.keys.devices)
        return {self.keys.device_name(kv.key): kv.value for kv in reply.kvs}

    # -- history and rollback --------------------------------------------------------------

    def history(self, limit: int = 20) -> list[Change]:
        """The last changes, newest first, as far back as etcd keeps them (until compaction)."""
        changes: list[Change] = []
        revision = 0
        while len(changes) < limit:
            try:
                reply = self.etcd.range(self.keys.head, revision=revision)
            except EtcdError as exc:
                if "compacted" in str(exc):
                    break
                raise
            if not reply.kvs:
                break
            kv = reply.kvs[0]
            head = json.loads(kv.value)
            changes.append(Change(kv.mod_revision, head.get("action", "?"), head.get("subject", ""),
                                  head.get("by", "?"), float(head.get("at", 0))))
            if kv.mod_revision <= 1:
                break
            revision = kv.mod_revision - 1
        return changes

    def rollback(self, to_revision: int, expect_revision: Optional[int],
                 max_txn_ops: int = ETCD_MAX_TXN_OPS) -> int:
        """Publish the policy as it was at `to_revision` (its file and device entries) as a
        new revision, in one transaction (daemons must never see part of it: a device revoked
        at `to_revision` would be allowed in between). Refused when etcd has compacted that
        revision, or when that transaction would exceed `max_txn_ops` (etcd's --max-txn-ops)."""
        at = self.etcd.range_prefix(self.keys.policy, revision=to_revision)
        values = {kv.key: kv.value for kv in at.kvs}
        if self.keys.base not in values:
            raise Conflict(f"no policy was published at revision {to_revision}")
        pointer = BasePointer.decode(values[self.keys.base])
        blob = self.etcd.range_prefix(self.keys.blob(pointer.sha256), revision=to_revision)
        data = b"".join(kv.value for kv in sorted(blob.kvs, key=lambda kv: kv.key))
        if hashlib.sha256(data).hexdigest() != pointer.sha256:
            raise Conflict(f"the file of revision {to_revision} is not complete in etcd any more")
        devices = {k: v for k, v in values.items() if k.startswith(self.keys.devices)}
        current = self.head_revision()
        now = self.etcd.range_prefix(self.keys.devices)  # unchanged since `current`, or the commit fails
        if expect_revision is not None and expect_revision != current:
            raise Conflict(f"the policy is at revision {current}, not {expect_revision}")
        # etcd refuses a put and a delete of the same key in one transaction: delete only the rest
        stale = [delete(kv.key) for kv in now.kvs if kv.key not in devices]
        ops = [put(self.keys.base, values[self.keys.base]), *stale, *(put(k, v) for k, v in sorted(devices.items()))]
        if len(ops) + 1 > max_txn_ops:  # + the head
            raise Conflict(_too_many_ops(to_revision, len(devices), len(stale), len(ops) + 1, max_txn_ops))
        self._write_chunks(pointer.sha256, data)
        try:
            revision = self._commit(current, ops, "rollback", f"to revision {to_revision}", pointer.sha256)
        except EtcdError as exc:
            if "too many operations" not in str(exc):
                raise
            raise Conflict(_too_many_ops(to_revision, len(devices), len(stale), len(ops) + 1, None)) from None
        self._drop_other_blobs(pointer.sha256)
        return revision


def _too_many_ops(to_revision: int, devices: int, stale: int, ops: int, limit: Optional[int]) -> str:
    said = f"more than {limit}, etcd's --max-txn-ops" if limit else "more than etcd's --max-txn-ops takes"
    return (f"rolling back to revision {to_revision} is one transaction of {ops} operations ({devices} device "
            f"entries to restore, {stale} to remove), {said}. Push the file you want instead (device "
            "entries are then dropped), or raise --max-txn-ops on every etcd member and pass the same "
            "--max-txn-ops to rollback")


__all__ = ["Change", "Conflict", "Fleet", "PolicyLoadError"]
