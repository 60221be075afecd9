"""Command-line entry points of the cluster area (`tracekit-demo`, `tracekit-chaos`, `tracekit-setup`).

Each imports its module when called: `setup` runs under the bare system python3 of a fresh controller, before
the packages the demo and the chaos run need are installed.
"""

from __future__ import annotations

import sys

from tracekit.core.cli import run_cli


def demo(argv: list[str] | None = None) -> None:
    """`make demo` / `tools/demo.py`: the whole pipeline on an emulated cluster."""
    from tracekit.cluster import demo as demo_run

    run_cli(lambda: demo_run.main(argv), "demo")


def chaos(argv: list[str] | None = None) -> None:
    """`make chaos` / `tools/chaos.py`: a fault-injection run that checks nothing is lost."""
    from tracekit.cluster import chaos as chaos_run

    run_cli(lambda: chaos_run.main(argv), "chaos")


def setup(argv: list[str] | None = None) -> None:
    """`tools/setup_{controller,worker}.sh`: prepare a real controller or worker machine."""
    from tracekit.cluster import setup as cluster_setup

    args = sys.argv[1:] if argv is None else argv
    role = args[0] if args and args[0] in ("controller", "worker") else ""
    run_cli(lambda: cluster_setup.main(argv), f"setup_{role}" if role else "setup")
