#!/usr/bin/env python3
"""Admin: `clean` deletes the run's control-plane keys (queues, capacity, registry) for a fresh run;
`stop-node` stops this node's worker and collector for RUN_ID via their pidfiles.

A thin shim over ``tracekit.control.cli.administer`` (also the ``[project.scripts]`` entry point).
"""

from tracekit.control.cli import administer

if __name__ == "__main__":
    administer()
