#!/usr/bin/env python3
"""Worker: registers this node (capacity, slots, binding) with a heartbeat, takes placed tasks from q:<node>
atomically and runs each through the adapter with its CPU binding. Recovers its own keys when restarted.

Signals: the first SIGINT/SIGTERM stops taking tasks and waits for the running ones; a second one is forwarded
to them. Redis outages are retried with backoff.

A thin shim over ``tracekit.control.cli.worker`` (also the ``[project.scripts]`` entry point).
"""

from tracekit.control.cli import worker

if __name__ == "__main__":
    worker()
