#!/usr/bin/env python3
"""make chaos: fault-injection run on an emulated cluster; checks that no task is lost or recorded twice (--help)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[0]))

from tracekit.chaos import main  # noqa: E402
from tracekit.errors import run_cli  # noqa: E402

if __name__ == "__main__":
    run_cli(main, "chaos")
