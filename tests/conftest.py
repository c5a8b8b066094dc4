import sys
from pathlib import Path

# Tests import the harness as `tests.harness` or `harness`; make both work.
sys.path.insert(0, str(Path(__file__).resolve().parent))
