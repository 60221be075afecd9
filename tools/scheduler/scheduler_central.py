#!/usr/bin/env python3
"""Central scheduler: strict FIFO on the head of q:pending, first-fit (or a weigher) over alive feasible nodes.

Each placement is one atomic Lua step; one JSON line per placement goes to logs/$RUN_ID/placements.jsonl.
Dead workers (heartbeat expired) are recovered: their tasks go back to the head of q:pending.

A thin shim over ``tracekit.control.cli.scheduler_central`` (also the ``[project.scripts]`` entry point).
"""

import sys

try:
    from tracekit.control.cli import scheduler_central
except ModuleNotFoundError as exc:  # run outside the project's environment: say how, not a traceback
    print(f"scheduler_central.py: error: Python module {exc.name!r} is missing for {sys.executable}: "
          "run `make setup`, then use .venv/bin/python (or activate .venv)", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    scheduler_central()
