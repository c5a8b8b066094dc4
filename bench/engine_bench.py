#!/usr/bin/env python3
"""The rule engine alone: decisions/s and compile time for 10 … 100,000 device identities.

Each size gets a rules file of the same shape: three patterns (`/device/%u/#`
readwrite, `/device/%u/secret` deny, `cmd/%c/#` read) plus one user block per
device with two rules of its own. All sizes are built, then measured side by
side in one run:

  * load: read, validate (every rule located, shadowed rules found) and compile,
    once with the fast users-section reader (engine/fastusers.py) and once with
    libyaml's composer for the whole file, best of --compile-rounds; then what
    loading defers: compiling every identity's rule set (each is compiled on its
    first check);
  * decisions/s: the same mix of --requests requests (own publish allowed,
    publish into another device denied, delivery, subscribe covered and not
    covered, the pattern deny) for identities drawn across the whole file;
    rounds interleave the sizes, best round reported. One more line runs the
    largest policy with the first size's identities only ("hot"): same code
    path, same rules per identity, so it separates algorithmic cost (none per
    identity) from the CPU-cache cost of touching a different identity each time.
Times are CPU seconds of this process (time.process_time): the machine is
shared, and wall time would measure the neighbours.

    .venv/bin/python bench/engine_bench.py [--sizes 10,10000,100000] [--requests 50000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from policyd.engine import Access, Request, compile_policy, parse_text  # noqa: E402

HEADER = """\
patterns:
  - {topic: /device/%u/#, access: readwrite}
  - {topic: /device/%u/secret, access: deny}
  - {topic: cmd/%c/#, access: read}
users:
"""
USER = """\
  Device{i}:
    - topic: fleet/Device{i}/config
      access: read
    - topic: fleet/Device{i}/telemetry
      access: write
"""


def rules_file(n: int) -> bytes:
    return (HEADER + "".join(USER.format(i=i) for i in range(n))).encode()


def request_mix(n: int, count: int, seed: int = 7) -> list[Request]:
    rng = random.Random(seed)
    out = []
    for k in range(count):
        me, other = f"Device{rng.randrange(n)}", f"Device{rng.randrange(n)}"
        cid = f"{me}-c"
        out.append([
            Request(me, cid, f"/device/{me}/temperature", Access.WRITE),       # allow (pattern)
            Request(me, cid, f"/device/{other}x/temperature", Access.WRITE),   # deny (default)
            Request(me, cid, f"fleet/{me}/config", Access.READ),               # allow (user block)
            Request(me, cid, f"/device/{me}/#", Access.SUBSCRIBE),             # allow (covers)
            Request(me, cid, "/device/#", Access.SUBSCRIBE),                   # deny (not covered)
            Request(me, cid, f"/device/{me}/secret", Access.READ),             # deny (pattern deny)
        ][k % 6])
    return out


def best_of(rounds: int, fn) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def compile_times(data: bytes, rounds: int) -> dict:
    def load(fast: bool):
        return lambda: compile_policy(parse_text(data, "bench.yaml", fast=fast))

    def compile_every_identity() -> float:  # what a reload defers to each identity's first check
        users = compile_policy(parse_text(data, "bench.yaml")).users
        t0 = time.process_time()
        for name in users:
            users[name]
        return time.process_time() - t0

    return {
        "fast": best_of(rounds, load(True)),
        "yaml": best_of(rounds, load(False)),
        "deferred": min(compile_every_identity() for _ in range(rounds)),
    }


def decisions_per_s(policies: dict, mixes: dict, rounds: int) -> dict:
    best = {n: 0.0 for n in policies}
    for _ in range(rounds):
        for n, policy in policies.items():  # interleaved: noise hits every size alike
            decide, requests = policy.decide, mixes[n]
            t0 = time.process_time()
            for req in requests:
                decide(req)
            best[n] = max(best[n], len(requests) / (time.process_time() - t0))
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10,10000,100000")
    ap.add_argument("--requests", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--compile-rounds", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    files = {n: rules_file(n) for n in sizes}
    times = {n: compile_times(files[n], args.compile_rounds) for n in sizes}
    policies = {n: compile_policy(parse_text(files[n], "bench.yaml")) for n in sizes}
    expected = [True, False, True, True, False, False]
    for n, policy in policies.items():  # the mix decides as intended, or the figures mean nothing
        got = [policy.decide(r).allowed for r in request_mix(n, 6)]
        assert got == expected, (n, got)
    mixes = {n: request_mix(n, args.requests) for n in sizes}
    hot = f"{sizes[-1]:,} (hot: {sizes[0]:,} ids)"
    policies[hot], mixes[hot] = policies[sizes[-1]], request_mix(sizes[0], args.requests)
    dps = decisions_per_s(policies, mixes, args.rounds)

    anchor = dps[sizes[0]]
    print(f"engine benchmark: {args.requests} requests x best of {args.rounds} rounds; "
          f"compile best of {args.compile_rounds}")
    print("| identities | file MiB | load, fast reader s | load, YAML reader s | fast / YAML "
          "| compiling every identity s (deferred to first checks) | decisions/s | x (first size) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        t = times[n]
        print(f"| {n:,} | {len(files[n]) / 2**20:.1f} | {t['fast']:.3f} | {t['yaml']:.3f} "
              f"| {t['fast'] / max(t['yaml'], 1e-9):.2f} | {t['deferred']:.3f} "
              f"| {dps[n]:,.0f} | {dps[n] / anchor:.2f} |")
    print(f"| {hot} | | | | | | {dps[hot]:,.0f} | {dps[hot] / anchor:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
