#!/usr/bin/env python3
"""Per-node /proc collector: `start` (daemon), `stop`, `run` (foreground). Settings come from the environment.

A thin shim over ``tracekit.node.cli.collect_sys`` (also the ``[project.scripts]`` entry point).
"""

import sys

try:
    from tracekit.node.cli import collect_sys
except ModuleNotFoundError as exc:  # run outside the project's environment: say how, not a traceback
    print(f"collect_sys.py: error: Python module {exc.name!r} is missing for {sys.executable}: "
          "run `make setup`, then use .venv/bin/python (or activate .venv)", file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    collect_sys()
