#!/usr/bin/env python3
"""Control-plane status: per node cap / cap_total / run_count / alive, queue lengths, the head task and why it
waits, done and failed counts. --watch refreshes it.

A thin shim over ``tracekit.control.cli.show_status`` (also the ``[project.scripts]`` entry point).
"""

from tracekit.control.cli import show_status

if __name__ == "__main__":
    show_status()
