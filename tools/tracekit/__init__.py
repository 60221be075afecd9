"""Tracekit: run a real workload across Linux nodes, measure every task exactly, export traces.

The package holds all logic; the scripts under ``tools/`` are thin command-line shells over it.
"""

__version__ = "0.1.0"
