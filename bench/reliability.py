"""Figures of the reliability tests, and docs/reliability.md rendered from them.

Each fault or hostile-input test calls `record(key, ...)` with what it measured;
one JSON file per row lands in .bench/reliability/ (one file each, so tests in
parallel processes never clobber each other). `python bench/reliability.py`
renders the table in docs/reliability.md from whatever the last run recorded.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / ".bench" / "reliability"
DOC = ROOT / "docs" / "reliability.md"
TABLE_START = "<!-- table:start -->"
TABLE_END = "<!-- table:end -->"

COLUMNS = ("Fault / input class", "How produced", "What happened", "Allowed msgs lost",
           "Denied delivered", "Recovery")


def record(key: str, *, row: str, how: str, happened: str, lost: str | int = "—",
           denied_delivered: int = 0, recovery: str = "—", test: str = "", **extra) -> None:
    """Write one row's measured figures (called by the tests that measure them)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"row": row, "how": how, "happened": happened, "lost": str(lost),
            "denied_delivered": denied_delivered, "recovery": recovery, "test": test,
            "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}
    (RESULTS / f"{key}.json").write_text(json.dumps(data, indent=1, sort_keys=True))


# Table order: faults first, then hostile input, then fuzzing.
CATEGORIES = ("fault", "hostile", "fuzz")


def _order(path: Path) -> tuple[int, str]:
    category = path.stem.split("-", 1)[0]
    return (CATEGORIES.index(category) if category in CATEGORIES else len(CATEGORIES), path.stem)


def load_rows() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"), key=_order)]


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        how = f"{r['how']} (`{r['test']}`)" if r.get("test") else r["how"]
        cells = (r["row"], how, r["happened"], r["lost"], r["denied_delivered"], r["recovery"])
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def render() -> None:
    doc = DOC.read_text()
    head, _, rest = doc.partition(TABLE_START)
    _, _, tail = rest.partition(TABLE_END)
    rows = load_rows()
    if not rows:
        sys.exit(f"no results in {RESULTS}: run the tests first (make test)")
    DOC.write_text(f"{head}{TABLE_START}\n{table(rows)}\n{TABLE_END}{tail}")
    print(f"{DOC}: {len(rows)} rows")


if __name__ == "__main__":
    render()
