#!/usr/bin/env python3
"""Run any allowed command once and measure it exactly (PID sentinel, binding, exec event).

Usage: RUN_ID=... TRACE_ID=... cmd_wrapper.py -- <command> [args]
The worker passes the task through the environment (docs/internals.md); see docs/node-side.md.

A thin shim over ``tracekit.node.cli.cmd_wrapper`` (also the ``[project.scripts]`` entry point).
"""

import sys

try:
    from tracekit.node.cli import cmd_wrapper
except ModuleNotFoundError as exc:  # run outside the project's environment: say how, not a traceback
    print(f"cmd_wrapper.py: error: Python module {exc.name!r} is missing for {sys.executable}: "
          "run `make setup`, then use .venv/bin/python (or activate .venv)", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    cmd_wrapper()
