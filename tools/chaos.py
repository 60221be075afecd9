#!/usr/bin/env python3
"""make chaos: fault-injection run on an emulated cluster; checks that no task is lost or recorded twice (--help).

A thin shim over ``tracekit.cluster.cli.chaos``.
"""

from tracekit.cluster.cli import chaos

if __name__ == "__main__":
    chaos()
