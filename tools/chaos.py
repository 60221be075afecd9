#!/usr/bin/env python3
"""make chaos: fault-injection run on an emulated cluster; checks that no task is lost or recorded twice (--help).

A thin shim over ``tracekit.cluster.cli.chaos``.
"""

import sys

try:
    from tracekit.cluster.cli import chaos
except ModuleNotFoundError as exc:  # run outside the project's environment: say how, not a traceback
    print(f"chaos.py: error: Python module {exc.name!r} is missing for {sys.executable}: "
          "run `make setup`, then use .venv/bin/python (or activate .venv)", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    chaos()
