#!/usr/bin/env python3
"""CTS of a run -> OpenDC trace (tasks.parquet, fragments.parquet) + topology.json + experiment.json.

A thin shim over ``tracekit.trace.cli.export_opendc`` (also the ``[project.scripts]`` entry point).
"""

from tracekit.trace.cli import export_opendc

if __name__ == "__main__":
    export_opendc()
