#!/usr/bin/env python3
"""Raw logs of a run (every node folder under logs/$RUN_ID/) -> logs/$RUN_ID/CTS/ + audit_report.md + plots.

A thin shim over ``tracekit.trace.cli.parse_cts`` (also the ``[project.scripts]`` entry point).
"""

from tracekit.trace.cli import parse_cts

if __name__ == "__main__":
    parse_cts()
