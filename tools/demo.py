#!/usr/bin/env python3
"""make demo: the whole Tracekit pipeline on an emulated N-node cluster (see --help).

A thin shim over ``tracekit.cluster.cli.demo``.
"""

from tracekit.cluster.cli import demo

if __name__ == "__main__":
    demo()
