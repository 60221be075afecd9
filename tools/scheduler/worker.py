#!/usr/bin/env python3
"""Worker: registers this node (capacity, slots, binding) with a heartbeat, takes placed tasks from q:<node>
atomically and runs each through the adapter with its CPU binding. Recovers its own keys when restarted.

Signals: the first SIGINT/SIGTERM stops taking tasks and waits for the running ones; a second one is forwarded
to them. Redis outages are retried with backoff.

A thin shim over ``tracekit.control.cli.worker`` (also the ``[project.scripts]`` entry point).
"""

import sys

try:
    from tracekit.control.cli import worker
except ModuleNotFoundError as exc:  # run outside the project's environment: say how, not a traceback
    print(f"worker.py: error: Python module {exc.name!r} is missing for {sys.executable}: "
          "run `make setup`, then use .venv/bin/python (or activate .venv)", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    worker()
