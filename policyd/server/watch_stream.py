"""Policy.Watch: the stream each broker's shim holds open to learn generations and kicks.

The stream sends the generation in force when it opens, then one event per
successful reload (split into several events of the same generation when the
kick list is long, so that every message stays small). The first event of
each carries the policy's whole revocation list: the daemon keeps no
sessions, so each broker matches it against the certificates it holds. Each open stream
holds one gRPC worker thread; at most MAX_STREAMS are served at once and the
server's pool is sized for them on top of the workers that answer checks
(serve.py), so watchers can never starve CheckAcl.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator

import grpc

from ..engine.diff import CLASS_TOKENS, KICK_ALL_NAMED, KICK_ANONYMOUS
from ..identity.spec import Revocations
from ..v1 import policy_pb2 as pb
from .store import PolicyStore, PolicySwap

log = logging.getLogger("policyd.watch")

MAX_STREAMS = 64
KICKS_PER_EVENT = 500
# 10,000 fingerprints are about 340 KB: far below the shim's 4 MiB message limit.
REVOCATIONS_PER_EVENT = 10_000
# How often an idle stream notices that its broker went away or the server stops.
LIVENESS_POLL_S = 0.5

_slots = threading.BoundedSemaphore(MAX_STREAMS)


def events_of(swap: PolicySwap, revoked: Revocations | None = None) -> Iterator[pb.PolicyEvent]:
    """The events of one swap: kicks in chunks, the class kicks in the first event and the
    whole revocation list (of the policy in force now) in chunks of its own."""
    names = sorted(swap.kicks - CLASS_TOKENS)
    kicks = [names[i:i + KICKS_PER_EVENT] for i in range(0, len(names), KICKS_PER_EVENT)] or [[]]
    revocations = revocation_chunks(revoked) if revoked is not None else []
    for i in range(max(len(kicks), len(revocations))):
        event = pb.PolicyEvent(generation=swap.generation)
        if i == 0:
            event.policy_digest = swap.digest
            event.kick_all_named = KICK_ALL_NAMED in swap.kicks
            event.kick_anonymous = KICK_ANONYMOUS in swap.kicks
        if i < len(kicks):
            event.kick_usernames.extend(n.encode() for n in kicks[i])
        if i < len(revocations):
            serials, prints = revocations[i]
            event.has_revocations = True
            event.revocation_chunk, event.revocation_chunks = i, len(revocations)
            event.revoked_serials.extend(serials)
            event.revoked_sha256.extend(prints)
        yield event


def revocation_chunks(revoked: Revocations) -> list[tuple[list[bytes], list[bytes]]]:
    """(serials, fingerprints) chunks of at most REVOCATIONS_PER_EVENT entries; at least one."""
    entries = [(True, _serial_bytes(s)) for s in sorted(revoked.serials)] + \
        [(False, bytes.fromhex(f)) for f in sorted(revoked.sha256)]
    chunks = []
    for start in range(0, max(len(entries), 1), REVOCATIONS_PER_EVENT):
        part = entries[start:start + REVOCATIONS_PER_EVENT]
        chunks.append(([v for is_serial, v in part if is_serial], [v for is_serial, v in part if not is_serial]))
    return chunks


def _serial_bytes(serial: int) -> bytes:
    """Unsigned big-endian without leading zero bytes, as the shim reads it from a certificate."""
    return serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big")


def _revocations(store: PolicyStore) -> Revocations:
    policy = store.current
    return policy.identity.revoked if policy is not None else Revocations()


def opening_events(broker: str, known: int, generation: int, missed: frozenset[str] | None,
                   revoked: Revocations | None = None, digest: bytes = b"") -> Iterator[pb.PolicyEvent]:
    """The generation in force, with the kicks a returning broker missed. When those cannot
    be proven complete, every session of that broker is kicked: any one of them may be a
    kick this daemon never heard of (the daemon keeps no sessions to narrow it down)."""
    incomplete = bool(known) and missed is None
    if incomplete:
        log.warning("broker %r returns from generation %d, whose kicks up to generation %d this daemon "
                    "cannot replay: it disconnects every client, each reconnects and is checked under "
                    "the policy in force", broker, known, generation)
        missed = CLASS_TOKENS
    log.info("Watch stream opened by broker %r at generation %d%s", broker, generation,
             f", replaying {len(missed)} kicks" if missed and not incomplete else "")
    events = events_of(PolicySwap(generation, missed or frozenset(), 0, digest), revoked)
    first = next(events)
    first.replay_incomplete = incomplete
    yield first
    yield from events


def watch(store: PolicyStore, request: pb.WatchRequest, context: grpc.ServicerContext) -> Iterator[pb.PolicyEvent]:
    if not _slots.acquire(blocking=False):
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"more than {MAX_STREAMS} Watch streams")
    swaps: queue.SimpleQueue[PolicySwap] = queue.SimpleQueue()
    listener = swaps.put
    broker = request.broker_id[:100] or "?"
    try:
        start = store.open_stream(listener, request.known_generation, request.known_policy_digest[:64])
        missed = start.missed
        if missed is None and request.known_generation:
            missed = store.missed_between(request.known_generation, start.generation)
            if missed is None:
                store.replays_incomplete += 1
        yield from opening_events(broker, request.known_generation, start.generation, missed,
                                  _revocations(store), start.digest)
        while context.is_active():
            try:
                swap = swaps.get(timeout=LIVENESS_POLL_S)
            except queue.Empty:
                continue
            yield from events_of(swap, _revocations(store))
    finally:
        store.remove_listener(listener)
        _slots.release()
        log.info("Watch stream of broker %r closed", broker)
