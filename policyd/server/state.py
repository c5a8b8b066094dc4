"""What survives a daemon restart (`policyd serve --state-dir DIR`).

Without it a restarted daemon knows nothing of the one before it: a rules file
broken while the daemon was down keeps it from starting (every broker then
denies whatever it has not cached), and brokers coming back from the old
generation cannot be told whom the new rules take access from. With it:

  rules-<sha256>.yaml  the exact bytes of the policy last in force;
  state.json           which of those files that is, its generation, and the
                       recent swaps (generation, previous, identities kicked).

After every successful load the rules are written under their own name, then
state.json is replaced (policyd/fileio.py: temporary file, fsync, rename), then
older rules files are removed: whenever the daemon stops, state.json names complete bytes. A
0700 directory with 0600 files: a rules file may carry password hashes. A state that cannot be read is reported and ignored — the
daemon then starts as if it had none, never from something half-written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..fileio import write_atomically
from .store import PolicySwap

log = logging.getLogger("policyd.state")

STATE_NAME = "state.json"
FORMAT = 1


@dataclass(frozen=True)
class SavedState:
    data: bytes                      # the rules file as it was when it was in force
    generation: int                  # the generation it had
    swaps: tuple[PolicySwap, ...]    # oldest first


class StateDir:
    """The state of the daemon serving `rules_file`; a state saved for another file is ignored
    (after `--rules` changes, the old policy is neither a fallback nor the base of a kick list)."""

    def __init__(self, path: str, rules_file: str):
        self.path = path
        self.rules_file = os.path.abspath(rules_file)
        self.ignored = False  # a saved state was found at start and not used (metric)

    def load(self) -> SavedState | None:
        """The saved state; None when there is none or it cannot be trusted (logged)."""
        state_file = os.path.join(self.path, STATE_NAME)
        try:
            with open(state_file, "rb") as fh:
                state = json.loads(fh.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("ignoring the saved state in %s: %s", self.path, exc)
            self.ignored = True
            return None
        try:
            with open(os.path.join(self.path, _rules_name(str(state["sha256"]))), "rb") as fh:
                data = fh.read()
            if state["format"] != FORMAT or hashlib.sha256(data).hexdigest() != state["sha256"]:
                raise ValueError("format or checksum does not match")
            if state["rules_file"] != self.rules_file:
                log.warning("ignoring the saved state in %s: it was saved for %s, not %s", self.path,
                            state["rules_file"], self.rules_file)
                self.ignored = True
                return None
            swaps = tuple(PolicySwap(int(s["generation"]), frozenset(map(str, s["kicks"])), int(s["previous"]))
                          for s in state["swaps"])
            return SavedState(data, int(state["generation"]), swaps)
        except (OSError, KeyError, TypeError, ValueError) as exc:
            log.error("ignoring the saved state in %s: %s is not a state this daemon wrote (%s)",
                      self.path, STATE_NAME, exc)
            self.ignored = True
            return None

    def save(self, data: bytes, generation: int, swaps: Iterable[PolicySwap]) -> None:
        """Replace the saved state; raises OSError (the caller counts and logs it)."""
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        sha256 = hashlib.sha256(data).hexdigest()
        state = {
            "format": FORMAT,
            "rules_file": self.rules_file,
            "generation": generation,
            "sha256": sha256,
            "swaps": [{"generation": s.generation, "previous": s.previous, "kicks": sorted(s.kicks)}
                      for s in swaps],
        }
        rules = _rules_name(sha256)
        write_atomically(Path(self.path, rules), data)
        write_atomically(Path(self.path, STATE_NAME), json.dumps(state).encode())
        for name in os.listdir(self.path):
            if name.startswith("rules-") and name != rules:
                os.unlink(os.path.join(self.path, name))


def _rules_name(sha256: str) -> str:
    if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
        raise ValueError("not a sha256")  # a hand-edited state.json cannot name another path
    return f"rules-{sha256}.yaml"
