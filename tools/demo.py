#!/usr/bin/env python3
"""make demo: the whole Tracekit pipeline on an emulated N-node cluster (see --help).

A thin shim over ``tracekit.cluster.cli.demo``.
"""

import sys

try:
    from tracekit.cluster.cli import demo
except ModuleNotFoundError as exc:  # run outside the project's environment: say how, not a traceback
    print(f"demo.py: error: Python module {exc.name!r} is missing for {sys.executable}: "
          "run `make setup`, then use .venv/bin/python (or activate .venv)", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    demo()
