#!/usr/bin/env python3
"""CTS of a run -> Chrome trace-event JSON (open it in ui.perfetto.dev): tasks per node and slot, CPU counters.

A thin shim over ``tracekit.trace.cli.export_perfetto`` (also the ``[project.scripts]`` entry point).
"""

from tracekit.trace.cli import export_perfetto

if __name__ == "__main__":
    export_perfetto()
