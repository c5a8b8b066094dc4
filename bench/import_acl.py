#!/usr/bin/env python3
"""`policyd import-acl` on large acl_files: time against the number of user blocks.

Each file: an anonymous section, N device blocks (`user DeviceI`, a readwrite subtree and a
deny carve-out), three patterns; the shape of a fleet's acl_file. Reported per size: CPU
seconds of import_acl() in this process (best of --rounds), and wall seconds of the whole
command (`policyd import-acl FILE -o OUT`, process start and atomic write included).
Target: 100,000 blocks in 2 s or less, growing linearly.

    .venv/bin/python bench/import_acl.py [--sizes 10000,20000,40000,100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from policyd.engine.acl_import import import_acl  # noqa: E402

TARGET_S = 2.0
TARGET_BLOCKS = 100_000


def acl_text(blocks: int) -> str:
    lines = ["topic read public/#"]
    for i in range(blocks):
        lines += [f"user Device{i}", f"topic readwrite fleet/Device{i}/#", f"topic deny fleet/Device{i}/locked"]
    lines += ["pattern readwrite dev/%u/#", "pattern deny dev/%u/secret", "pattern read cmd/%c/#"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,20000,40000,100000")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'blocks':>8} {'import_acl() CPU s':>19} {'µs/block':>9} {'command wall s':>15}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for blocks in sizes:
            text = acl_text(blocks)
            cpu = []
            for _ in range(args.rounds):
                start = time.process_time()
                rules, _ = import_acl(text, "acl")
                cpu.append(time.process_time() - start)
                assert rules is not None
            acl = Path(tmp) / "acl"
            acl.write_text(text)
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "policyd", "import-acl", str(acl), "-o", str(Path(tmp) / "out.yaml")],
                           check=True, cwd=ROOT, stderr=subprocess.DEVNULL)
            wall = time.perf_counter() - start
            results[blocks] = min(cpu)
            print(f"{blocks:>8} {min(cpu):>19.2f} {min(cpu) / blocks * 1e6:>9.1f} {wall:>15.2f}")
    if TARGET_BLOCKS in results:
        verdict = "met" if results[TARGET_BLOCKS] <= TARGET_S else "MISSED"
        print(f"target: {TARGET_BLOCKS} blocks in <= {TARGET_S} s CPU: {verdict} ({results[TARGET_BLOCKS]:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
