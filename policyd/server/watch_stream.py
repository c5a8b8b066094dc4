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
# How often an idle stream notices that its broker went away or the server stops.
LIVENESS_POLL_S = 0.5

_slots = threading.BoundedSemaphore(MAX_STREAMS)


def events_of(swap: PolicySwap, revoked: Revocations | None = None) -> Iterator[pb.PolicyEvent]:
    """The events of one swap: kicks in chunks; the class kicks and the whole
    revocation list (the policy in force now) in the first."""
    names = sorted(swap.kicks - CLASS_TOKENS)
    first = pb.PolicyEvent(generation=swap.generation, kick_all_named=KICK_ALL_NAMED in swap.kicks,
                           kick_anonymous=KICK_ANONYMOUS in swap.kicks)
    if revoked is not None:
        first.has_revocations = True
        first.revoked_serials.extend(_serial_bytes(s) for s in sorted(revoked.serials))
        first.revoked_sha256.extend(bytes.fromhex(f) for f in sorted(revoked.sha256))
    first.kick_usernames.extend(n.encode() for n in names[:KICKS_PER_EVENT])
    yield first
    for start in range(KICKS_PER_EVENT, len(names), KICKS_PER_EVENT):
        chunk = names[start:start + KICKS_PER_EVENT]
        yield pb.PolicyEvent(generation=swap.generation, kick_usernames=[n.encode() for n in chunk])


def _serial_bytes(serial: int) -> bytes:
    """Unsigned big-endian without leading zero bytes, as the shim reads it from a certificate."""
    return serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big")


def _revocations(store: PolicyStore) -> Revocations:
    policy = store.current
    return policy.identity.revoked if policy is not None else Revocations()


def opening_events(broker: str, known: int, generation: int, missed: frozenset[str] | None,
                   revoked: Revocations | None = None) -> Iterator[pb.PolicyEvent]:
    """The generation in force, with the kicks a returning broker missed."""
    if known and missed is None:
        log.warning("broker %r returns from generation %d, which this daemon does not remember: "
                    "kicks of reloads since then cannot be replayed (its clients are still checked "
                    "under generation %d)", broker, known, generation)
    log.info("Watch stream opened by broker %r at generation %d%s", broker, generation,
             f", replaying {len(missed)} kicks" if missed else "")
    yield from events_of(PolicySwap(generation, missed or frozenset()), revoked)


def watch(store: PolicyStore, request: pb.WatchRequest, context: grpc.ServicerContext) -> Iterator[pb.PolicyEvent]:
    if not _slots.acquire(blocking=False):
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"more than {MAX_STREAMS} Watch streams")
    swaps: queue.SimpleQueue[PolicySwap] = queue.SimpleQueue()
    listener = swaps.put
    broker = request.broker_id[:100] or "?"
    try:
        generation, missed = store.subscribe(listener, request.known_generation)
        yield from opening_events(broker, request.known_generation, generation, missed, _revocations(store))
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
