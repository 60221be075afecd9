#!/usr/bin/env python3
"""Per-node /proc collector: `start` (daemon), `stop`, `run` (foreground). Settings come from the environment.

A thin shim over ``tracekit.node.cli.collect_sys`` (also the ``[project.scripts]`` entry point).
"""

from tracekit.node.cli import collect_sys

if __name__ == "__main__":
    collect_sys()
