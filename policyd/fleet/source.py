"""`policyd serve --source etcd://...`: the policy follows etcd, revision by revision.

Start: read `<prefix>/policy/` at one revision (and the pushed file's chunks at that
same revision), build, install with generation = epoch + that revision (layout.py), then watch from
the next one. A revision that changes only device entries is applied to the policy
in force (no file is parsed, the other identities keep their compiled rules); one
that points `base` elsewhere (a push, a rollback) is a full build. Either way the
store swaps once, kicks whom the change took access from, and tells the brokers.

etcd unreachable: the policy in force stays in force (it is complete: only whole
revisions are applied), status and metrics say so, and the watch is retried; on
return it resumes from the last applied revision (etcd replays what was missed), or
syncs afresh if that history was compacted. With a state directory every applied
revision is saved, so a daemon started while etcd is down serves it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from aetcd import rpc

from ..engine import CompiledPolicy, PolicyLoadError, Problem, SourceRef
from ..engine.diff import usernames_to_kick_among
from ..fileio import write_atomically
from . import FleetUnavailable
from .etcd import Etcd, EtcdError
from .layout import BasePointer, BaseUsers, DeviceEntry, Keys, build_policy, overlay, read_device, read_epoch

log = logging.getLogger("policyd.fleet")

RETRY_MIN_S, RETRY_MAX_S = 0.2, 5.0
# A watch stays open on a member that lost quorum and then hears nothing: a quorum read this
# often tells "no change" from "cut off", for status and metrics, and moves the watch.
PROBE_EVERY_S = 2.0
STATE_NAME = "fleet-state.json"
STATE_FORMAT = 1


@dataclass
class FleetStatus:
    source: str
    connected: bool = False
    revision: int = 0             # the revision in force (generation = epoch + revision)
    base_sha256: str = ""
    devices: int = 0              # device entries on top of the pushed file
    since: float = 0.0            # when `connected` last changed
    last_error: str = ""
    disconnects: int = 0
    rejected: int = 0             # revisions that could not be applied (logged)
    applied: int = 0              # revisions applied since start


class FleetSource:
    def __init__(self, store, etcd: Etcd, state_dir: Optional[str] = None):
        self.store = store
        self.etcd = etcd
        self.keys = Keys(etcd.source.prefix)
        self.state_dir = state_dir
        self.status = FleetStatus(etcd.source.url, since=time.time())
        self._base: Optional[BasePointer] = None
        self._base_data = b""
        self._base_users: Optional[BaseUsers] = None
        self._base_pair: tuple[Optional[BasePointer], Optional[BaseUsers]] = (None, None)
        self._devices: dict[str, bytes] = {}
        self._stop = threading.Event()
        self._watch = None
        self._thread: Optional[threading.Thread] = None
        self._watch_from = 0  # the next revision to apply
        self._epoch = 0       # layout.EPOCH_SCALE: written by the first push
        store.missed_from_source = self.missed_between

    # -- start and stop ---------------------------------------------------------------

    def start(self) -> None:
        """The first policy: from etcd, else from the saved state; raises FleetUnavailable."""
        try:
            self._sync()
            self._set_connected(True)
        except (EtcdError, PolicyLoadError) as exc:
            self._set_connected(False, str(exc))
            if not self._resume_saved():
                raise FleetUnavailable(f"{self.status.source}: {exc}") from None
            log.warning("etcd unreachable at start (%s): serving the saved revision %d until it returns",
                        exc, self.status.revision)
        self._thread = threading.Thread(target=self._run, name="policyd-fleet", daemon=True)
        self._thread.start()
        self._prober = threading.Thread(target=self._probe, name="policyd-fleet-probe", daemon=True)
        self._prober.start()

    def stop(self) -> None:
        self._stop.set()
        watch = self._watch
        if watch is not None:
            watch.cancel()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.etcd.close()

    def _run(self) -> None:
        delay = RETRY_MIN_S
        while not self._stop.is_set():
            try:
                if not self.status.connected:
                    self._sync()  # catch up: etcd may have moved on while we could not see it
                    self._set_connected(True)
                self._follow()
            except (EtcdError, PolicyLoadError) as exc:
                if self._stop.is_set():
                    return
                self._set_connected(False, str(exc))
                self._stop.wait(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = RETRY_MIN_S

    def _probe(self) -> None:
        while not self._stop.wait(PROBE_EVERY_S):
            if not self.status.connected:
                continue  # _run is already retrying
            try:
                self.etcd.range(self.keys.head, timeout_s=PROBE_EVERY_S)  # linearizable: needs quorum
            except EtcdError as exc:
                if self._stop.is_set():
                    return
                self._set_connected(False, str(exc))
                watch = self._watch
                if watch is not None:
                    watch.cancel()  # _run syncs again, from whichever member has the quorum

    def _set_connected(self, connected: bool, error: str = "") -> None:
        if connected != self.status.connected:
            self.status.since = time.time()
            if connected:
                log.info("etcd %s reachable: policy revision %d in force", self.status.source,
                         self.status.revision)
            else:
                self.status.disconnects += 1
                log.error("etcd %s unreachable, serving revision %d until it returns: %s",
                          self.status.source, self.status.revision, error)
        self.status.connected = connected
        if error:
            self.status.last_error = error

    def describe(self) -> str:
        """One line for `policyd status`."""
        st = self.status
        if st.connected:
            return f"revision {st.revision}, etcd reachable"
        return (f"revision {st.revision}, etcd UNREACHABLE for {time.time() - st.since:.0f} s, serving "
                f"the last complete policy: {st.last_error}")

    # -- reading etcd ---------------------------------------------------------------------

    def _sync(self) -> None:
        """Read the whole policy at one revision and install it (if it is not in force)."""
        reply = self.etcd.range_prefix(self.keys.policy)
        at = reply.header.revision
        values, revision = {}, 0
        for kv in reply.kvs:
            values[kv.key] = kv.value
            revision = max(revision, kv.mod_revision)
        if self.keys.base not in values:
            raise EtcdError(
                f"nothing pushed under {self.status.source} yet: run `policyd push FILE --source ...`")
        devices = {self.keys.device_name(k): v for k, v in values.items() if k.startswith(self.keys.devices)}
        epoch = read_epoch(values.get(self.keys.epoch))
        if revision == self.status.revision and epoch == self._epoch and self.store.has_policy:
            self._watch_from = at + 1
            return
        try:
            pointer = BasePointer.decode(values[self.keys.base])
            if self._base is not None and pointer.sha256 == self._base.sha256 and epoch == self._epoch:
                changed = {n: v for n, v in devices.items() if self._devices.get(n) != v}
                removed = [n for n in self._devices if n not in devices]
                self._apply_devices(changed, removed, revision, "etcd catch-up")
            else:
                data = self._read_chunks(pointer, at)
                self._epoch = epoch
                self._install_base(pointer, data, devices, revision, "etcd sync")
        except PolicyLoadError as exc:
            if not self.store.has_policy:
                raise
            # written by hand (push validates): etcd is fine, this revision is not
            self.status.rejected += 1
            log.error("etcd revision %d rejected, keeping revision %d: %s", revision, self.status.revision, exc)
        self._watch_from = at + 1

    def _read_chunks(self, pointer: BasePointer, revision: int) -> bytes:
        reply = self.etcd.range_prefix(self.keys.blob(pointer.sha256), revision)
        data = b"".join(kv.value for kv in sorted(reply.kvs, key=lambda kv: kv.key))
        if len(reply.kvs) != pointer.chunks or hashlib.sha256(data).hexdigest() != pointer.sha256:
            raise PolicyLoadError([Problem(SourceRef(f"etcd:{self.keys.prefix}/policy/base", 0, 0, ""), (
                f"the pushed file {pointer.sha256[:12]} is incomplete in etcd at revision {revision} "
                f"({len(reply.kvs)} of {pointer.chunks} chunks)"))])
        return data

    def _follow(self) -> None:
        """Apply each revision the watch delivers until it fails or stop() is called."""
        self._watch = self.etcd.watch_prefix(self.keys.policy, self._watch_from)
        if self._stop.is_set():
            self._watch.cancel()
        for response in self._watch:
            if response.canceled or response.compact_revision:
                # the revisions we missed are compacted away: read the whole state again
                log.warning("etcd watch from revision %d cancelled (%s): syncing afresh",
                            self._watch_from, response.cancel_reason or f"compacted at {response.compact_revision}")
                self._set_connected(False, "watch cancelled by etcd")
                return
            batch: list = []
            for event in response.events:
                if batch and event.kv.mod_revision != batch[-1].kv.mod_revision:
                    self._apply_revision(batch)
                    batch = []
                batch.append(event)
            if batch:
                self._apply_revision(batch)
            self._watch_from = max(self._watch_from, response.header.revision + 1)
        if not self._stop.is_set():
            raise EtcdError("etcd closed the watch")

    def _apply_revision(self, events: list) -> None:
        """One revision: every event of one etcd transaction, applied as one swap."""
        revision = events[0].kv.mod_revision
        base_value = None
        changed: dict[str, bytes] = {}
        removed: list[str] = []
        for event in events:
            key = event.kv.key
            name = self.keys.device_name(key)
            deleted = event.type == rpc.Event.DELETE
            if key == self.keys.base:
                base_value = None if deleted else event.kv.value
            elif key == self.keys.epoch and not deleted:
                self._epoch = read_epoch(event.kv.value)  # a first push: it comes with a base
            elif name is not None:
                if deleted:
                    removed.append(name)
                    changed.pop(name, None)
                else:
                    changed[name] = event.kv.value
                    if name in removed:
                        removed.remove(name)
        try:
            if base_value is not None:
                pointer = BasePointer.decode(base_value)
                devices = {**self._devices, **changed}
                for name in removed:
                    devices.pop(name, None)
                self._install_base(pointer, self._read_chunks(pointer, revision), devices, revision,
                                   f"etcd revision {revision}")
            elif changed or removed:
                self._apply_devices(changed, [n for n in removed if n in self._devices], revision,
                                    f"etcd revision {revision}")
        except PolicyLoadError as exc:
            self.status.rejected += 1
            log.error("etcd revision %d rejected, keeping revision %d: %s", revision,
                      self.status.revision, exc)
        self._watch_from = revision + 1

    # -- kicks a returning broker missed -------------------------------------------------

    def missed_between(self, known: int, generation: int) -> Optional[frozenset[str]]:
        """The kicks from generation `known` to `generation` (both of this epoch), from etcd's
        history: the device entries at the two revisions, diffed as a device change is. Any
        daemon answers the same, whether or not it applied those revisions itself. None when
        that cannot be proven: another epoch, a push in between (a whole new file: the
        daemon's own swaps may still cover it), or history etcd has compacted."""
        epoch = self._epoch
        if not epoch or known <= epoch or generation <= epoch:
            return None
        at, now = known - epoch, generation - epoch
        if at >= now:
            return frozenset()  # this daemon lags behind the broker: the swaps to come carry the kicks
        pointer, users = self._base_pair
        try:
            before = self.etcd.range_prefix(self.keys.policy, revision=at)
            after = self.etcd.range_prefix(self.keys.policy, revision=now)
        except EtcdError as exc:  # compacted, or etcd unreachable
            log.warning("cannot read etcd revisions %d..%d to replay missed kicks: %s", at, now, exc)
            return None
        old = {kv.key: kv.value for kv in before.kvs}
        new = {kv.key: kv.value for kv in after.kvs}
        same = [old.get(k) == new.get(k) and new.get(k) is not None for k in (self.keys.base, self.keys.epoch)]
        if not all(same) or users is None or BasePointer.decode(new[self.keys.base]).sha256 != pointer.sha256:
            return None
        devices_old = {self.keys.device_name(k): v for k, v in old.items() if k.startswith(self.keys.devices)}
        devices_new = {self.keys.device_name(k): v for k, v in new.items() if k.startswith(self.keys.devices)}
        changed = {n for n in devices_old.keys() | devices_new.keys() if devices_old.get(n) != devices_new.get(n)}
        if not changed:
            return frozenset()
        policy = self.store.current
        states = []
        for devices in (devices_old, devices_new):
            entries = self._entries({n: devices[n] for n in changed if n in devices}, quiet=True)
            states.append(overlay(policy, users, entries, [n for n in changed if n not in entries]))
        return usernames_to_kick_among(states[0], states[1], changed)

    # -- applying -----------------------------------------------------------------------

    def _entries(self, devices: dict[str, bytes], quiet: bool = False) -> dict[str, DeviceEntry]:
        """Device entries; one that does not validate (written by hand) revokes its device.
        `quiet`: an entry read again (replay), already reported when it was applied."""
        entries = {}
        for name, value in devices.items():
            where = (self.keys.device(name)).decode(errors="replace")
            try:
                entries[name] = read_device(name, value, where)
            except PolicyLoadError as exc:
                if not quiet:
                    log.error("%s is not a valid device entry, the device is denied everything: %s", where, exc)
                    self.status.rejected += 1
                try:
                    entries[name] = read_device(name, b'{"revoked": "invalid device entry"}', where)
                except PolicyLoadError:
                    pass  # a name that can never match a client: nothing to deny
        return entries

    def _install_base(self, pointer: BasePointer, data: bytes, devices: dict[str, bytes], revision: int,
                      trigger: str) -> None:
        where = f"etcd:{self.keys.prefix}/blobs/{pointer.sha256[:12]}"
        policy, base_users = build_policy(data, self._entries(devices), where)
        self._base, self._base_data, self._base_users = pointer, data, base_users
        self._base_pair = (pointer, base_users)  # read by other threads in one step
        self._install(policy, devices, revision, trigger, None)

    def _apply_devices(self, changed: dict[str, bytes], removed: list[str], revision: int, trigger: str) -> None:
        devices = {**self._devices, **changed}
        for name in removed:
            devices.pop(name, None)
        entries = self._entries(changed)
        policy = overlay(self.store.current, self._base_users, entries,
                         [n for n in removed if n not in entries])
        self._install(policy, devices, revision, trigger, set(changed) | set(removed))

    def _install(self, policy: CompiledPolicy, devices: dict[str, bytes], revision: int, trigger: str,
                 names) -> None:
        self.store.install(policy.with_generation(self._epoch + revision), trigger, names)
        self._devices = devices
        self.status.revision, self.status.base_sha256 = revision, self._base.sha256
        self.status.devices = len(devices)
        self.status.applied += 1
        self._save()

    # -- the saved state ------------------------------------------------------------------

    def _save(self) -> None:
        if self.state_dir is None:
            return
        try:
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
            base_name = f"fleet-base-{self._base.sha256}.yaml"
            base_path = Path(self.state_dir, base_name)
            if not base_path.exists():
                write_atomically(base_path, self._base_data)
            state = {"format": STATE_FORMAT, "source": self.status.source, "revision": self.status.revision,
                     "epoch": self._epoch,
                     "base": {"sha256": self._base.sha256, "chunks": self._base.chunks,
                              "size": self._base.size},
                     "devices": {n: v.decode() for n, v in self._devices.items()}}
            write_atomically(Path(self.state_dir, STATE_NAME), json.dumps(state).encode())
            for name in os.listdir(self.state_dir):
                if name.startswith("fleet-base-") and name != base_name:
                    os.unlink(os.path.join(self.state_dir, name))
        except OSError as exc:
            self.store.state_errors += 1
            log.error("cannot save the fleet state to %s (%s): a restart while etcd is down would "
                      "serve an older revision", self.state_dir, exc)

    def _resume_saved(self) -> bool:
        if self.state_dir is None:
            return False
        try:
            with open(os.path.join(self.state_dir, STATE_NAME), "rb") as fh:
                state = json.loads(fh.read())
            if state["format"] != STATE_FORMAT or state["source"] != self.status.source:
                log.warning("ignoring the saved fleet state in %s: saved for %s", self.state_dir, state["source"])
                return False
            pointer = BasePointer(**state["base"])
            with open(os.path.join(self.state_dir, f"fleet-base-{pointer.sha256}.yaml"), "rb") as fh:
                data = fh.read()
            if hashlib.sha256(data).hexdigest() != pointer.sha256:
                raise ValueError("the saved file does not match its checksum")
            devices = {str(n): str(v).encode() for n, v in state["devices"].items()}
            revision = int(state["revision"])
            self._epoch = int(state["epoch"])
        except FileNotFoundError:
            return False
        except (OSError, KeyError, TypeError, ValueError) as exc:
            log.error("ignoring the saved fleet state in %s: %s", self.state_dir, exc)
            return False
        self._install_base(pointer, data, devices, revision, "saved state")
        self._watch_from = revision + 1
        return True
