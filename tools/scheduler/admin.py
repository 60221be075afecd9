#!/usr/bin/env python3
"""Admin: `clean` deletes the run's control-plane keys (queues, capacity, registry) for a fresh run;
`stop-node` stops this node's worker and collector for RUN_ID via their pidfiles.

A thin shim over ``tracekit.control.cli.administer`` (also the ``[project.scripts]`` entry point).
"""

import sys

try:
    from tracekit.control.cli import administer
except ModuleNotFoundError as exc:  # run outside the project's environment: say how, not a traceback
    print(f"admin.py: error: Python module {exc.name!r} is missing for {sys.executable}: "
          "run `make setup`, then use .venv/bin/python (or activate .venv)", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    administer()
