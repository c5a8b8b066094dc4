"""`make -C fuzz short`: the libFuzzer targets (response decoding, topic matching, option
parsing, link target locality) replay their regressions and fuzz for a few seconds each; any crash, sanitizer report
or broken invariant fails the run."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from reliability import record  # noqa: E402


def test_fuzz_targets_short_run():
    assert shutil.which("clang-14") or shutil.which("clang"), "clang is needed (make deps)"
    assert (ROOT / "plugin_c" / "build" / "gen").is_dir(), "run `make plugin` first"
    proc = subprocess.run(["make", "-s", "-C", str(ROOT / "fuzz"), "short"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    runs = re.findall(r"fuzz_(\w+): (\d+) s\s+stat::number_of_executed_units: (\d+)", proc.stdout)
    assert {name for name, _, _ in runs} == {"response", "topic_match", "config", "link_target"}, proc.stdout
    for name, seconds, execs in runs:
        assert int(execs) > 1000, (name, execs)
        record(f"fuzz-{name}", row=f"libFuzzer: {name.replace('_', ' ')}",
               how=f"`make fuzz-short` (clang-14 -fsanitize=fuzzer,address,undefined), {seconds} s, "
                   "regressions replayed first",
               test="tests/unit/test_fuzz_targets.py",
               happened=f"{int(execs):,} inputs, no crash, no sanitizer report, invariants held",
               lost="n/a", denied_delivered=0)
