#!/usr/bin/env python3
"""Dispatcher: build a task mix (reproducible with --seed) and enqueue it on q:pending for the central scheduler.

Modes: default = everything at once; --pending with --pending-mode pulse|fifo; --drip. --wait follows the run to
its end and prints done / failed / makespan (exit 1 when a task failed).

A thin shim over ``tracekit.control.cli.dispatcher`` (also the ``[project.scripts]`` entry point).
"""

import sys

try:
    from tracekit.control.cli import dispatcher
except ModuleNotFoundError as exc:  # run outside the project's environment: say how, not a traceback
    print(f"dispatcher.py: error: Python module {exc.name!r} is missing for {sys.executable}: "
          "run `make setup`, then use .venv/bin/python (or activate .venv)", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    dispatcher()
