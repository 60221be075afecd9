#!/usr/bin/env python3
"""Run any allowed command once and measure it exactly (PID sentinel, binding, exec event).

Usage: RUN_ID=... TRACE_ID=... cmd_wrapper.py -- <command> [args]
The worker passes the task through the environment (docs/internals.md); see docs/node-side.md.

A thin shim over ``tracekit.node.cli.cmd_wrapper`` (also the ``[project.scripts]`` entry point).
"""

from tracekit.node.cli import cmd_wrapper

if __name__ == "__main__":
    cmd_wrapper()
