"""Where policy generation numbers come from.

A broker's shim tags every cached answer with the generation that gave it and
drops what a newer generation may have changed, so a generation must never be
reused for other rules and never go backwards, not even across a daemon restart
or a wall clock stepped back. `Generations` is the one interface the store uses
(a fleet-wide source, such as a shared store's revision, can replace it):

  * `next_after(previous)`: a new number, higher than every one handed out before;
  * `resumed(generation)`: a generation already in force (a saved state) is taken.

`ClockGenerations` hands out max(wall clock in ms, last + 1) and records each
number in a small file *before* it is published, so the next process starts
above it whatever the clock says. Without a file (no `--state-dir` and a TCP
listener) only the wall clock orders generations across restarts.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable, Protocol

from ..fileio import write_atomically

log = logging.getLogger("policyd.generations")


class Generations(Protocol):
    def next_after(self, previous: int) -> int: ...

    def resumed(self, generation: int) -> None: ...


class ClockGenerations:
    def __init__(self, floor_file: str | None = None, *, directory_mode: int = 0o700,
                 clock: Callable[[], float] = time.time):
        self.floor_file = floor_file
        self.directory_mode = directory_mode
        self._clock = clock
        self.floor = self._read_floor()
        self.save_errors = 0

    def _read_floor(self) -> int:
        if self.floor_file is None:
            return 0
        try:
            with open(self.floor_file, "rb") as fh:
                return max(0, int(fh.read(32).strip() or b"0"))
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:  # the clock still orders generations; say so
            log.error("cannot read the last generation from %s (%s): new generations follow the wall "
                      "clock only", self.floor_file, exc)
            return 0

    def next_after(self, previous: int) -> int:
        generation = max(int(self._clock() * 1000), previous + 1, self.floor + 1)
        self.floor = generation
        self._save(generation)
        return generation

    def resumed(self, generation: int) -> None:
        if generation > self.floor:
            self.floor = generation
            self._save(generation)

    def _save(self, generation: int) -> None:
        if self.floor_file is None:
            return
        try:
            os.makedirs(os.path.dirname(self.floor_file), mode=self.directory_mode, exist_ok=True)
            write_atomically(Path(self.floor_file), f"{generation}\n".encode(), mode=0o600)
        except OSError as exc:  # the generation is still new in this process; only a restart could reuse it
            self.save_errors += 1
            log.error("cannot record generation %d in %s (%s): after a restart with the wall clock set "
                      "back, generations could go backwards", generation, self.floor_file, exc)
